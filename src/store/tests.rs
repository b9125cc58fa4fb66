//! The store's contracts: fills started, joined, resumed, bounded and abandoned through
//! `read_or_fill`, against an origin the test feeds by hand; reads through the `Storage` trait.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use pingora_cache::eviction::simple_lru;
use pingora_cache::storage::HandleHit;
use pingora_cache::trace::Span;
use sha2::Digest;
use tokio::sync::mpsc;

use super::*;

fn leak(dir: &std::path::Path) -> &'static BlobStore {
    leak_with(dir, FillPolicy::default())
}

fn leak_with(dir: &std::path::Path, policy: FillPolicy) -> &'static BlobStore {
    let mut store = BlobStore::open(dir).unwrap();
    store.set_fill_policy(policy);
    Box::leak(Box::new(store))
}

fn lfs_id(data: &[u8]) -> BlobId {
    BlobId::Sha256(sha2::Sha256::digest(data).into())
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// A piece of an answer's body; `Cut` ends it with an error.
enum Piece {
    Bytes(Bytes),
    Cut,
}

/// An origin the test drives: each `open` takes the next queued answer (an error, or a body
/// whose pieces the test sends) and records the offset it was asked from.
#[derive(Default)]
struct Origin {
    answers: parking_lot::Mutex<VecDeque<Result<mpsc::UnboundedReceiver<Piece>, String>>>,
    offsets: parking_lot::Mutex<Vec<u64>>,
}

/// Sends the pieces of one answer; dropping it ends the body.
struct Feed(mpsc::UnboundedSender<Piece>);

impl Feed {
    fn send(&self, bytes: &[u8]) {
        let _ = self.0.send(Piece::Bytes(Bytes::copy_from_slice(bytes)));
    }

    fn cut(self) {
        let _ = self.0.send(Piece::Cut);
    }
}

impl Origin {
    fn new() -> Arc<Origin> {
        Arc::new(Origin::default())
    }

    /// Queues an answer and returns what feeds its body.
    fn answer(&self) -> Feed {
        let (tx, rx) = mpsc::unbounded_channel();
        self.answers.lock().push_back(Ok(rx));
        Feed(tx)
    }

    fn refuse(&self, why: &str) {
        self.answers.lock().push_back(Err(why.to_string()));
    }

    fn source(self: &Arc<Origin>) -> impl FnOnce() -> Arc<dyn Refetch> {
        let me = self.clone();
        move || me
    }
}

struct Body(mpsc::UnboundedReceiver<Piece>);

#[async_trait]
impl RefetchBody for Body {
    async fn chunk(&mut self) -> std::result::Result<Option<Bytes>, RefetchError> {
        match self.0.recv().await {
            Some(Piece::Bytes(b)) => Ok(Some(b)),
            Some(Piece::Cut) => Err("cut".into()),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Refetch for Origin {
    async fn open(&self, offset: u64) -> std::result::Result<Box<dyn RefetchBody>, RefetchError> {
        self.offsets.lock().push(offset);
        match self.answers.lock().pop_front() {
            Some(Ok(rx)) => Ok(Box::new(Body(rx))),
            Some(Err(why)) => Err(why.into()),
            None => Err("no answer queued".into()),
        }
    }
}

async fn fill(store: &'static BlobStore, id: BlobId, size: usize, origin: &Arc<Origin>) -> Fetch {
    store.read_or_fill(id, size as u64, origin.source()).await
}

fn started(f: Fetch) -> BlobReader {
    match f {
        Fetch::Started(r) => r,
        Fetch::Joined(_) => panic!("joined"),
        Fetch::Complete(_) => panic!("complete"),
        Fetch::Refused(why) => panic!("refused: {why}"),
    }
}

async fn read_all(r: &mut BlobReader) -> pingora::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = r.read_body().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

async fn lookup(store: &'static BlobStore, id: &BlobId) -> Option<HitHandler> {
    let span = Span::inactive().handle();
    store
        .lookup(&cache_key(id), &span)
        .await
        .unwrap()
        .map(|(_, h)| h)
}

/// Waits (bounded) until the store holds no fill and no temp file.
async fn settled(store: &'static BlobStore, dir: &std::path::Path) {
    for _ in 0..200 {
        let temps = std::fs::read_dir(dir.join("tmp")).unwrap().count();
        if store.stats.fills.load(Ordering::Relaxed) == 0 && temps == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the fill did not end");
}

#[tokio::test]
async fn a_fill_streams_to_its_readers_commits_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(600_000);
    let id = lfs_id(&body);
    let origin = Origin::new();
    let feed = origin.answer();
    let mut first = started(fill(store, id, body.len(), &origin).await);
    feed.send(&body[..100_000]);
    first.wait_opened().await.unwrap();
    let chunk = first.read_body().await.unwrap().unwrap();
    assert_eq!(
        &chunk[..],
        &body[..chunk.len()],
        "bytes stream while the fill runs"
    );
    let Fetch::Joined(mut second) = fill(store, id, body.len(), &origin).await else {
        panic!("a second request joins the fill");
    };
    for c in body[100_000..].chunks(100_000) {
        feed.send(c);
    }
    let mut got = chunk.to_vec();
    got.extend(read_all(&mut first).await.unwrap());
    assert_eq!(got, body);
    assert_eq!(read_all(&mut second).await.unwrap(), body);
    assert!(store.contains(&id));
    assert_eq!(*origin.offsets.lock(), [0], "one upstream request");
    assert!(matches!(
        fill(store, id, body.len(), &origin).await,
        Fetch::Complete(_)
    ));

    let reopened = BlobStore::open(dir.path()).unwrap();
    let counts = reopened.stats.counts();
    assert_eq!((counts.objects, counts.bytes), (1, body.len() as u64));
    assert!(reopened.contains(&id));
}

#[tokio::test]
async fn git_oid_blobs_are_verified_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = b"{\"model_type\": \"gpt2\"}\n".to_vec();
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", body.len()));
    h.update(&body);
    let id = BlobId::GitOid(h.finalize().into());
    let origin = Origin::new();
    origin.answer().send(&body);
    let mut r = started(fill(store, id, body.len(), &origin).await);
    assert_eq!(read_all(&mut r).await.unwrap(), body);
    assert!(store.contains(&id));
}

#[tokio::test]
async fn the_last_byte_is_held_back_until_the_blob_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(b"not this content");
    let origin = Origin::new();
    let feed = origin.answer();
    let mut r = started(fill(store, id, body.len(), &origin).await);
    feed.send(&body);
    // The content does not match its id: the commit fails, so the last byte never comes.
    let mut got = Vec::new();
    let err = loop {
        match r.read_body().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => panic!("a bad blob must not end like a whole one"),
            Err(e) => break e,
        }
    };
    // A reader as fast as the fill gets everything but the last byte; one that comes to read
    // after the fill failed gets the error at once. Never the last byte.
    assert!(
        got.len() < body.len() && body.starts_with(&got),
        "a prefix without the last byte: {} bytes",
        got.len()
    );
    assert!(err.to_string().contains("hashes to"), "{err}");
    assert!(!store.contains(&id));
    assert_eq!(store.stats.integrity_failures.load(Ordering::Relaxed), 1);
    settled(store, dir.path()).await;
}

#[tokio::test]
async fn a_range_during_a_fill_waits_only_for_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(&body);
    let origin = Origin::new();
    let feed = origin.answer();
    let mut r = started(fill(store, id, body.len(), &origin).await);
    feed.send(&body[..300]);
    r.wait_opened().await.unwrap();
    assert!(r.can_seek());
    r.seek(100, Some(200)).unwrap();
    assert_eq!(read_all(&mut r).await.unwrap(), &body[100..200]);
    drop(feed);
}

#[tokio::test]
async fn bytes_that_arrived_reach_readers_while_the_origin_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let origin = Origin::new();
    let feed = origin.answer();
    let mut r = started(fill(store, lfs_id(&body), body.len(), &origin).await);
    // The second piece comes right after the first, too soon to be handed over on arrival;
    // then the origin sends nothing more for a while.
    feed.send(&body[..100]);
    feed.send(&body[100..300]);
    r.wait_opened().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 300 {
        let next = tokio::time::timeout(Duration::from_secs(2), r.read_body()).await;
        got.extend_from_slice(&next.expect("bytes held back").unwrap().unwrap());
    }
    assert_eq!(got, body[..300]);
    drop(feed);
}

#[tokio::test]
async fn a_cut_body_resumes_from_the_first_missing_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(2000);
    let id = lfs_id(&body);
    let origin = Origin::new();
    let first = origin.answer();
    let rest = origin.answer();
    let mut r = started(fill(store, id, body.len(), &origin).await);
    first.send(&body[..700]);
    first.cut();
    rest.send(&body[700..]);
    assert_eq!(
        read_all(&mut r).await.unwrap(),
        body,
        "the reader never sees the cut"
    );
    assert_eq!(*origin.offsets.lock(), [0, 700]);
    assert_eq!(store.stats.resumes.load(Ordering::Relaxed), 1);
    assert_eq!(store.stats.resumed_bytes.load(Ordering::Relaxed), 1300);
}

#[tokio::test]
async fn a_fill_cut_beyond_resuming_fails_its_readers_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(&body);
    let origin = Origin::new();
    let feed = origin.answer();
    for _ in 0..resume::MAX_IDLE_ATTEMPTS {
        origin.refuse("503");
    }
    let mut r = started(fill(store, id, body.len(), &origin).await);
    feed.send(&body[..500]);
    r.wait_opened().await.unwrap();
    assert_eq!(r.read_body().await.unwrap().unwrap().len(), 500);
    feed.cut();
    assert!(
        r.read_body().await.is_err(),
        "a cut fill is an error, not EOF (pingora #932)"
    );
    assert!(!store.contains(&id));
    assert!(lookup(store, &id).await.is_none());
    assert_eq!(store.stats.resumes.load(Ordering::Relaxed), 3);
    assert_eq!(store.stats.abandoned_fills.load(Ordering::Relaxed), 1);
    settled(store, dir.path()).await;
}

#[tokio::test]
async fn a_fill_that_fails_before_its_first_byte_tells_its_readers_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let id = lfs_id(b"x");
    let origin = Origin::new();
    origin.refuse("upstream answered 404");
    let mut r = started(fill(store, id, 1, &origin).await);
    match r.wait_opened().await {
        Err(FillFailure::Upstream(e)) => assert_eq!(e.to_string(), "upstream answered 404"),
        other => panic!("{other:?}"),
    }
    settled(store, dir.path()).await;
    assert_eq!(store.stats.reserved_bytes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_body_longer_than_promised_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(100);
    let id = lfs_id(&body[..50]);
    let origin = Origin::new();
    origin.answer().send(&body);
    let mut r = started(fill(store, id, 50, &origin).await);
    assert!(read_all(&mut r).await.is_err());
    assert!(!store.contains(&id));
    settled(store, dir.path()).await;
}

#[tokio::test]
async fn fills_beyond_max_fills_are_refused_until_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let policy = FillPolicy {
        max_fills: 1,
        ..FillPolicy::default()
    };
    let store = leak_with(dir.path(), policy);
    let (a, b) = (data(100), data(200));
    let origin = Origin::new();
    let feed = origin.answer();
    let mut first = started(fill(store, lfs_id(&a), a.len(), &origin).await);
    let refused = fill(store, lfs_id(&b), b.len(), &origin).await;
    assert!(matches!(refused, Fetch::Refused(Refused::MaxFills)));
    assert!(
        matches!(
            fill(store, lfs_id(&a), a.len(), &origin).await,
            Fetch::Joined(_)
        ),
        "joining a running fill is not a new fill"
    );
    feed.send(&a);
    read_all(&mut first).await.unwrap();
    settled(store, dir.path()).await;
    origin.answer().send(&b);
    let mut second = started(fill(store, lfs_id(&b), b.len(), &origin).await);
    assert_eq!(read_all(&mut second).await.unwrap(), b);
    assert_eq!(store.stats.over_max_fills.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn fills_reserve_their_size_under_max_size_and_eviction_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let eviction: &'static simple_lru::Manager =
        Box::leak(Box::new(simple_lru::Manager::new(1000)));
    let policy = FillPolicy {
        max_size: 1000,
        eviction: Some(eviction),
        ..FillPolicy::default()
    };
    let store = leak_with(dir.path(), policy);
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8; 600]).collect();
    let origin = Origin::new();
    origin.answer().send(&blobs[0]);
    let mut r = started(fill(store, lfs_id(&blobs[0]), 600, &origin).await);
    read_all(&mut r).await.unwrap();
    assert!(store.contains(&lfs_id(&blobs[0])));

    // 600 reserved for the second fill: the first blob is evicted before a byte is fetched.
    let feed = origin.answer();
    let mut second = started(fill(store, lfs_id(&blobs[1]), 600, &origin).await);
    assert_eq!(store.stats.reserved_bytes.load(Ordering::Relaxed), 600);
    for _ in 0..200 {
        if !store.contains(&lfs_id(&blobs[0])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!store.contains(&lfs_id(&blobs[0])), "evicted to make room");
    // A third cannot fit beside the second's reservation: served uncached.
    let third = fill(store, lfs_id(&blobs[2]), 600, &origin).await;
    assert!(matches!(third, Fetch::Refused(Refused::NoRoom)));
    feed.send(&blobs[1]);
    read_all(&mut second).await.unwrap();
    assert_eq!(store.stats.reserved_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(
        eviction.total_size(),
        600,
        "the committed blob, in real bytes"
    );
}

#[tokio::test]
async fn a_fill_without_readers_is_cancelled_unless_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let policy = FillPolicy {
        orphan_grace: Duration::from_millis(50),
        ..FillPolicy::default()
    };
    let store = leak_with(dir.path(), policy);
    let (early, late) = (data(1000), data(1001));
    let origin = Origin::new();

    // A quarter written when its only reader leaves: cancelled after the grace.
    let feed_early = origin.answer();
    let mut r = started(fill(store, lfs_id(&early), early.len(), &origin).await);
    feed_early.send(&early[..250]);
    r.wait_opened().await.unwrap();
    r.read_body().await.unwrap();
    drop(r);
    settled(store, dir.path()).await;
    assert_eq!(store.stats.orphans_cancelled.load(Ordering::Relaxed), 1);
    assert!(!store.contains(&lfs_id(&early)));

    // Three quarters written: finished for the next client.
    let feed_late = origin.answer();
    let mut r = started(fill(store, lfs_id(&late), late.len(), &origin).await);
    feed_late.send(&late[..750]);
    r.wait_opened().await.unwrap();
    let mut got = 0;
    while got < 750 {
        got += r.read_body().await.unwrap().unwrap().len();
    }
    drop(r);
    tokio::time::sleep(Duration::from_millis(150)).await;
    feed_late.send(&late[750..]);
    settled(store, dir.path()).await;
    assert!(store.contains(&lfs_id(&late)), "finished without readers");
    assert_eq!(store.stats.orphans_cancelled.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn boot_removes_temp_files_of_dead_writers() {
    let dir = tempfile::tempdir().unwrap();
    BlobStore::open(dir.path()).unwrap();
    let stale = dir
        .path()
        .join("tmp")
        .join(format!("{}.999999999.1.part", "a".repeat(64)));
    std::fs::write(&stale, b"half").unwrap();
    BlobStore::open(dir.path()).unwrap();
    assert!(!stale.exists());
}

#[tokio::test]
async fn purge_removes_the_blob_but_not_from_under_an_open_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(300_000);
    let id = lfs_id(&body);
    let origin = Origin::new();
    origin.answer().send(&body);
    read_all(&mut started(fill(store, id, body.len(), &origin).await))
        .await
        .unwrap();
    let mut r = lookup(store, &id).await.unwrap();
    let span = Span::inactive().handle();
    let key = cache_key(&id).to_compact();
    let out = store
        .purge(PurgeTarget::Active(&key), PurgeType::Eviction, &span)
        .await
        .unwrap();
    assert_eq!(out, PurgeOutcome::Purged(None));
    assert!(!store.contains(&id));
    let mut rest = Vec::new();
    while let Some(b) = r.read_body().await.unwrap() {
        rest.extend_from_slice(&b);
    }
    assert_eq!(rest, body);
    assert_eq!(store.stats.bytes.load(Ordering::Relaxed), 0);
}
