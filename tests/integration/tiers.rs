//! Tiers: an hf-edge whose upstream is another hf-edge (a site's edge in front of a region's),
//! in front of the fake Hub. The site's clients see what they would see against the Hub:
//! headers, errors, ranges, auth, no Xet hints; and the region fetches each blob once for
//! every site.

use crate::fake_hub::FakeHub;
use crate::fixtures::{
    APPROVED, GATED_LFS, GPT2_MISSING, LFS, LFS_SIZE, MANY_FILES_TREE, NOT_APPROVED, XET_2MIB,
};
use crate::harness::Edge;

/// A region edge in front of `hub` and a site edge in front of the region.
fn tiers(hub: &FakeHub) -> (Edge, Edge) {
    let region = Edge::start(hub);
    let site = Edge::builder_at(&format!("http://{}", region.addr)).start();
    (region, site)
}

/// The headers a client reads of a file, as the Hub's direct answer has them.
const FILE_HEADERS: [&str; 6] = [
    "etag",
    "x-linked-etag",
    "x-linked-size",
    "x-repo-commit",
    "content-length",
    "content-disposition",
];

#[test]
fn a_site_edge_in_front_of_a_region_edge_answers_as_the_hub_does() {
    let hub = FakeHub::start();
    let (region, site) = tiers(&hub);
    let direct = region.head(LFS, &[]);
    let through = site.head(LFS, &[]);
    assert_eq!(through.status, 200);
    for h in FILE_HEADERS {
        assert_eq!(through.header(h), direct.header(h), "{h}");
    }
    let whole = site.get(LFS, &[]);
    whole.assert_whole_lfs_file();
    assert_eq!(whole.cache(), Some("miss"));
    let part = site.get(LFS, &[("Range", "bytes=100-199")]);
    assert_eq!(part.status, 206);
    let content_range = format!("bytes 100-199/{LFS_SIZE}");
    assert_eq!(part.header("content-range"), Some(content_range.as_str()));
    assert_eq!(part.body, whole.body[100..200]);
    let past_the_end = site.get(LFS, &[("Range", &format!("bytes={LFS_SIZE}-"))]);
    assert_eq!(past_the_end.status, 416);

    // A second site (or the same after losing its store) costs the Hub nothing more.
    let other_site = Edge::builder_at(&format!("http://{}", region.addr)).start();
    let again = other_site.get(LFS, &[]);
    again.assert_whole_lfs_file();
    assert_eq!(hub.body_fetches(), 1, "the region fetched it once");
    assert_eq!(region.get(LFS, &[]).cache(), Some("hit"));

    // Errors keep their status and code; a JSON body.
    for r in [site.get(GPT2_MISSING, &[]), site.head(GPT2_MISSING, &[])] {
        assert_eq!(r.status, 404);
        assert_eq!(r.header("x-error-code"), Some("EntryNotFound"));
    }
    assert!(site.get(GPT2_MISSING, &[]).json()["error"].is_string());

    // No Xet hints reach the site's clients, in downloads or listings.
    let xet = site.get(XET_2MIB, &[]);
    assert_eq!(xet.status, 200);
    assert!(xet
        .headers
        .iter()
        .all(|(k, _)| !k.to_ascii_lowercase().starts_with("x-xet")));
    let tree = site.get(MANY_FILES_TREE, &[]);
    assert_eq!(tree.status, 200);
    let link = tree.header("link").expect("a next page");
    assert!(
        link.starts_with(&format!("<http://{}/", site.addr)),
        "{link}"
    );
    let listing = site.get("/api/models/fake-org/xet-model/tree/main", &[]);
    assert!(!listing.text().contains("xetHash"));
}

#[test]
fn gated_files_through_two_edges_follow_each_clients_own_token() {
    let hub = FakeHub::start();
    let (_region, site) = tiers(&hub);
    let approved = site.get(GATED_LFS, &[APPROVED]);
    assert_eq!(approved.status, 200, "{}", approved.text());
    // Stored at both tiers now; still refused to those the Hub refuses.
    let anonymous = site.get(GATED_LFS, &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(anonymous.header("x-error-code"), Some("GatedRepo"));
    let not_approved = site.get(GATED_LFS, &[NOT_APPROVED]);
    assert_eq!(not_approved.status, 403, "{}", not_approved.text());
    assert_eq!(site.get(GATED_LFS, &[APPROVED]).body, approved.body);
}
