//! Micro-benchmarks for the pure hot paths: path grammar, the range rule, header building.
//! `cargo bench --bench hot_paths` prints ns per call (median of several timed batches).

use std::hint::black_box;
use std::time::Instant;

use hf_edge::hub::grammar;
use hf_edge::hub::headers::{content_disposition, rewrite_links};
use hf_edge::hub::url::Origin;
use hf_edge::proxy::range;
use pingora::http::RequestHeader;

const BATCH: u32 = 20_000;
const BATCHES: usize = 15;

fn bench(name: &str, mut f: impl FnMut()) {
    let mut per_call: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(BATCH)
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    println!("{name:<40} {:>9.1} ns/call", per_call[BATCHES / 2]);
}

fn main() {
    let paths = [
        "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors",
        "/datasets/HuggingFaceFW/fineweb/resolve/refs%2Fpr%2F1/data/CC-MAIN-2024-10/000_00000.parquet",
        "/api/models/org/name/tree/main?recursive=true",
    ];
    bench("grammar::parse (resolve, model)", || {
        black_box(grammar::parse(black_box(paths[0])).ok());
    });
    bench("grammar::parse (resolve, dataset, pr ref)", || {
        black_box(grammar::parse(black_box(paths[1])).ok());
    });
    bench("grammar::parse (api tree)", || {
        black_box(grammar::parse(black_box(paths[2])).ok());
    });
    let mut ranged = RequestHeader::build("GET", b"/x", None).unwrap();
    ranged
        .insert_header("range", "bytes=1048576-2097151")
        .unwrap();
    bench("range rule", || {
        black_box(range::decide(black_box(&ranged), None, 1 << 30));
    });
    bench("content_disposition", || {
        black_box(content_disposition(black_box(
            "model-00001-of-00002.safetensors",
        )));
    });
    let hub = Origin::parse("https://huggingface.co").unwrap();
    let link = "<https://huggingface.co/api/models/a/b/tree/main?recursive=true&cursor=ZXk%3D>; rel=\"next\"";
    bench("rewrite_links (next page)", || {
        black_box(rewrite_links(black_box(link), &hub, "http://edge:8080"));
    });
}
