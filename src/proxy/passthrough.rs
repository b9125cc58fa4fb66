//! The pass-through flow: `/api/...`, LFS batch, git, and everything that is not a file
//! download goes to the Hub and back, uncached. On the way back: next-page `Link`s point at
//! hf-edge; `xetHash` leaves tree and paths-info listings (so Xet-backed repos download over
//! HTTP through hf-edge); LFS batch answers' download actions point at hf-edge (see
//! [`super::lfs`]); and the last good answers `snapshot_download` needs are kept, to be
//! served, marked stale, when the Hub cannot answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};
use pingora_proxy::Session;

use super::ctx::{Ctx, Flow, LfsBatch, Passthrough, Target};
use super::lfs::LfsActions;
use super::respond;
use crate::access::IdentityKey;
use crate::hub::grammar::{self, ApiKind, Route};
use crate::hub::headers;
use crate::hub::lfs::Rewrite;
use crate::hub::status;
use crate::hub::upstream::{HostClass, Upstream};
use crate::hub::url::Url;
use crate::metrics::{Metrics, RevisionLookup};
use crate::resolver::Resolver;
use crate::snapshots::{self, ApiSnapshots, Snapshot};

/// Largest tree / paths-info JSON page rewritten in memory (the Hub pages at 1000 entries).
const MAX_JSON_BODY: usize = 32 << 20;

/// The listings whose JSON carries `xetHash`.
fn rewrites_json(route: &Route) -> bool {
    matches!(
        route,
        Route::Api(ApiKind::Tree | ApiKind::PathsInfo | ApiKind::Revision | ApiKind::Info)
    )
}

/// The answers `snapshot_download` needs to start, kept for outages.
fn keeps_snapshot(route: &Route, method: &Method) -> bool {
    *method == Method::GET
        && matches!(
            route,
            Route::Api(ApiKind::Tree | ApiKind::Revision | ApiKind::Info)
        )
}

/// What the pass-through flow works with.
pub struct PassthroughFlow {
    /// `public_url`, when configured: the base of rewritten `Link`s and `Location`s.
    pub public_url: Option<String>,
    /// The mount's prefix as it goes in front of rewritten paths (empty at `/`).
    pub mount_base: String,
    pub upstream: Arc<Upstream>,
    pub resolver: Arc<Resolver>,
    pub snapshots: Arc<ApiSnapshots>,
    pub metrics: Arc<Metrics>,
    /// The Hub's LFS download actions, taken out of the batch answers rewritten here.
    pub lfs_actions: Arc<LfsActions>,
}

impl PassthroughFlow {
    /// `request_filter`: records the pass-through; in offline mode answers it from its last
    /// good answer, or with a 504.
    pub async fn start(&self, session: &mut Session, ctx: &mut Ctx, route: &Route) -> Result<bool> {
        let req = session.req_header();
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let pass = Passthrough {
            target: Target::to(Url::on(&self.upstream.hub, pq), &self.upstream),
            public_base: self
                .public_url
                .clone()
                .or_else(|| public_base(req, ctx.client.https))
                .map(|base| base + &self.mount_base),
            rewrites_json: rewrites_json(route),
            json: None,
            snapshot_key: keeps_snapshot(route, &req.method)
                .then(|| snapshots::key_for(req.uri.path(), req.uri.query()))
                .flatten(),
            snapshot_link: None,
            entry_not_found: None,
            lfs_batch: (req.method == Method::POST)
                .then(|| grammar::lfs_batch_repo(req.uri.path()))
                .flatten()
                .map(|repo| LfsBatch {
                    repo,
                    client_auth: req.headers.get(header::AUTHORIZATION).cloned(),
                }),
        };
        let offline = self.upstream.is_offline();
        ctx.flow = Flow::Passthrough(Box::new(pass));
        if !offline {
            return Ok(false);
        }
        if self.serve_snapshot(session, ctx).await? {
            return Ok(true);
        }
        let msg = "hf-edge is offline: the Hub is not contacted and no earlier answer is kept";
        respond::error(session, 504, msg, &ctx.request_id).await
    }

    /// `upstream_response_filter`: `Link`s to hf-edge, and a JSON listing set aside to be
    /// rewritten. A failure with a last good answer kept becomes an error, which
    /// `fail_to_proxy` answers with that answer.
    pub fn on_response(
        &self,
        resp: &mut ResponseHeader,
        pass: &mut Passthrough,
        auth: Option<&HeaderValue>,
    ) -> Result<()> {
        let code = resp.status.as_u16();
        if status::unavailable(code) && self.snapshot_owner(pass, auth).is_some() {
            return Error::e_explain(ErrorType::HTTPStatus(code), "upstream failed");
        }
        let hub = &self.upstream.hub;
        if let Some(link) = resp.headers.get(header::LINK).and_then(|v| v.to_str().ok()) {
            // Kept as paths: the base is this request's, never stored for another's.
            let paths = headers::rewrite_links(link, hub, "");
            if let Some(base) = &pass.public_base {
                resp.insert_header(header::LINK, headers::rewrite_links(&paths, hub, base))?;
            }
            pass.snapshot_link = Some(paths);
        }
        let location = resp
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok());
        if let (Some(base), Some(location)) = (&pass.public_base, location) {
            if let Some(moved) = headers::rewrite_location(location, hub, base) {
                resp.insert_header(header::LOCATION, moved)?;
            }
        }
        let json = resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let lfs_json = resp.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/vnd.git-lfs+json") || v.starts_with(b"application/json")
        });
        let rewritten = (json && pass.rewrites_json) || (lfs_json && pass.lfs_batch.is_some());
        // A listing of a folder the revision lacks is an answer too, kept as the listing would
        // be: clients ask for optional folders (transformers' chat templates) and would retry a
        // 502 for a minute during an outage.
        let not_found = code == 404
            && pass.snapshot_key.is_some()
            && resp
                .headers
                .get("x-error-code")
                .is_some_and(|v| v.as_bytes() == b"EntryNotFound");
        if not_found && json {
            let message = resp.headers.get("x-error-message");
            pass.entry_not_found = Some(message.map_or_else(String::new, |m| {
                String::from_utf8_lossy(m.as_bytes()).into_owned()
            }));
        }
        if (rewritten && resp.status.is_success()) || pass.entry_not_found.is_some() {
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::ETAG);
            pass.json = Some(Vec::new());
        }
        Ok(())
    }

    /// `response_body_filter`: a listing is collected, stripped of `xetHash` and kept as the
    /// last good answer when it is one `snapshot_download` needs.
    pub fn on_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        pass: &mut Passthrough,
        auth: Option<&HeaderValue>,
    ) -> Result<()> {
        let Some(buf) = pass.json.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            if buf.len() + chunk.len() > MAX_JSON_BODY {
                return Error::e_explain(ErrorType::InternalError, "tree listing too large");
            }
            buf.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            return Ok(());
        }
        let collected = std::mem::take(buf);
        if let Some(batch) = &pass.lfs_batch {
            let base = pass.public_base.as_deref();
            *body = Some(self.rewrite_lfs_batch(collected, batch, base, auth).into());
            return Ok(());
        }
        let out = strip_xet_hashes(collected);
        if let Some(key) = &pass.snapshot_key {
            let snap = Snapshot {
                content_type: "application/json".into(),
                link: pass.snapshot_link.clone(),
                body: String::from_utf8_lossy(&out).into_owned(),
                entry_not_found: pass.entry_not_found.clone(),
            };
            self.snapshots.save(IdentityKey::of(auth), key, snap);
        }
        *body = Some(out);
        Ok(())
    }

    /// A batch answer with its download actions pointing at hf-edge (`base`: as the client
    /// reached it), the Hub's own kept for this identity; unchanged without a base or when it
    /// is not a batch answer.
    fn rewrite_lfs_batch(
        &self,
        collected: Vec<u8>,
        batch: &LfsBatch,
        base: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Vec<u8> {
        let Some(base) = base else {
            return collected;
        };
        let object_url = |oid: &str| format!("{base}/{}.git/info/lfs/objects/{oid}", batch.repo);
        let fetchable = |href: &str| {
            Url::parse(href).is_ok_and(|u| self.upstream.classify(&u) != HostClass::Foreign)
        };
        let rewrite = Rewrite {
            object_url: &object_url,
            fetchable: &fetchable,
            client_auth: batch.client_auth.as_ref().and_then(|v| v.to_str().ok()),
            max_ttl: self.lfs_actions.max_ttl,
            now: chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()),
        };
        match rewrite.apply(&collected) {
            Some(r) => {
                let identity = IdentityKey::of(auth);
                self.lfs_actions.keep(identity, &batch.repo, r.actions);
                r.body
            }
            None => collected,
        }
    }

    /// Whose last good answer to this API request this client may be given: its own, while
    /// its identity may be served stale, else the public one; `None` if neither is kept.
    fn snapshot_owner(
        &self,
        pass: &Passthrough,
        auth: Option<&HeaderValue>,
    ) -> Option<IdentityKey> {
        let key = pass.snapshot_key.as_deref()?;
        let own = IdentityKey::of(auth);
        if self.resolver.may_serve_stale(auth) && self.snapshots.contains(own, key) {
            return Some(own);
        }
        let public = IdentityKey::anonymous();
        self.snapshots.contains(public, key).then_some(public)
    }

    /// Answers with the last good answer, marked stale; `false` if there is none.
    pub async fn serve_snapshot(&self, session: &mut Session, ctx: &Ctx) -> Result<bool> {
        let Flow::Passthrough(pass) = &ctx.flow else {
            return Ok(false);
        };
        let (Some(owner), Some(key)) = (
            self.snapshot_owner(pass, ctx.auth.as_ref()),
            pass.snapshot_key.as_deref(),
        ) else {
            return Ok(false);
        };
        let Some(snap) = self.snapshots.load(owner, key).await else {
            return Ok(false);
        };
        self.metrics.revision_lookup(RevisionLookup::StaleServed);
        let status = if snap.entry_not_found.is_some() {
            404
        } else {
            200
        };
        let mut resp = ResponseHeader::build(status, Some(8))?;
        if let Some(message) = &snap.entry_not_found {
            resp.insert_header("x-error-code", "EntryNotFound")?;
            resp.insert_header("x-error-message", message)?;
        }
        resp.insert_header(header::CONTENT_TYPE, snap.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, snap.body.len().to_string())?;
        resp.insert_header("warning", headers::STALE_WARNING)?;
        resp.insert_header("x-request-id", &ctx.request_id)?;
        if let (Some(paths), Some(base)) = (snap.link, &pass.public_base) {
            let link = headers::rewrite_links(&paths, &self.upstream.hub, base);
            resp.insert_header(header::LINK, link)?;
        }
        let head = session.req_header().method == Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(snap.body)), true)
                .await?;
        }
        Ok(true)
    }
}

/// A listing without `xetHash`; a body that is not JSON after all passes as it came.
fn strip_xet_hashes(raw: Vec<u8>) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(mut v) => {
            headers::strip_xet_hash(&mut v);
            Bytes::from(serde_json::to_vec(&v).expect("JSON value serializes"))
        }
        Err(_) => Bytes::from(raw),
    }
}

/// `scheme://host` the client used, for `Link` rewriting: https when it came over TLS, to
/// hf-edge or (`X-Forwarded-Proto`) to a trusted proxy in front of it.
fn public_base(req: &RequestHeader, https: bool) -> Option<String> {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let proto = if https { "https" } else { "http" };
    Some(format!("{proto}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::grammar;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn public_base_is_what_the_client_used() {
        let r = req("/api/models/a/b", &[("host", "edge:8080")]);
        assert_eq!(public_base(&r, false).as_deref(), Some("http://edge:8080"));
        assert_eq!(public_base(&r, true).as_deref(), Some("https://edge:8080"));
        // The scheme is the connection's (or a trusted proxy's, see client.rs), never a header's.
        let r = req(
            "/x",
            &[("host", "edge.site"), ("x-forwarded-proto", "https")],
        );
        assert_eq!(public_base(&r, false).as_deref(), Some("http://edge.site"));
        assert_eq!(public_base(&req("/x", &[]), false), None);
    }

    #[test]
    fn listings_are_rewritten_and_kept_only_where_clients_need_it() {
        let route = |p: &str| grammar::parse(p).unwrap();
        let tree = route("/api/models/org/m/tree/main");
        assert!(rewrites_json(&tree));
        assert!(keeps_snapshot(&tree, &Method::GET));
        assert!(!keeps_snapshot(&tree, &Method::POST));
        let paths_info = route("/api/models/org/m/paths-info/main");
        assert!(rewrites_json(&paths_info) && !keeps_snapshot(&paths_info, &Method::POST));
        let whoami = route("/api/whoami-v2");
        assert!(!rewrites_json(&whoami) && !keeps_snapshot(&whoami, &Method::GET));
    }

    #[test]
    fn xet_hashes_leave_listings_and_other_bodies_pass() {
        let listing = br#"[{"path":"a","xetHash":"x","size":1}]"#.to_vec();
        assert_eq!(
            &strip_xet_hashes(listing)[..],
            br#"[{"path":"a","size":1}]"#
        );
        let html = b"<html>not json</html>".to_vec();
        assert_eq!(&strip_xet_hashes(html.clone())[..], &html[..]);
    }
}
