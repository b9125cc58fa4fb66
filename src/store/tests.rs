//! The store's contracts, exercised through the `Storage` trait without a server.

use std::time::SystemTime;

use bytes::Bytes;
use pingora_cache::storage::MissFinishType;
use pingora_cache::trace::Span;
use sha2::Digest;

use super::*;

fn leak(dir: &std::path::Path) -> &'static BlobStore {
    Box::leak(Box::new(BlobStore::open(dir).unwrap().0))
}

fn lfs_id(data: &[u8]) -> BlobId {
    BlobId::Sha256(sha2::Sha256::digest(data).into())
}

fn meta_for(size: usize) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header(header::CONTENT_LENGTH, size.to_string())
        .unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + FOREVER, now, 0, 0, h)
}

async fn writer(store: &'static BlobStore, id: &BlobId, size: usize) -> MissHandler {
    let span = Span::inactive().handle();
    store
        .get_miss_handler(&cache_key(id), &meta_for(size), &span)
        .await
        .unwrap()
}

async fn read_all(hit: &mut HitHandler) -> pingora::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await? {
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

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn write_then_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(600_000);
    let id = lfs_id(&body);
    let mut w = writer(store, &id, body.len()).await;
    for chunk in body.chunks(100_000) {
        w.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .unwrap();
    }
    assert!(matches!(w.finish().await.unwrap(), MissFinishType::Created(n) if n == body.len()));
    assert!(store.contains(&id));
    assert_eq!(
        read_all(&mut lookup(store, &id).await.unwrap())
            .await
            .unwrap(),
        body
    );

    let (reopened, found) = BlobStore::open(dir.path()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].size, body.len() as u64);
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
    let mut w = writer(store, &id, body.len()).await;
    w.write_body(Bytes::from(body.clone()), true).await.unwrap();
    w.finish().await.unwrap();
    assert!(store.contains(&id));
}

#[tokio::test]
async fn readers_stream_a_fill_and_get_the_last_byte_only_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(&body);
    let mut w = writer(store, &id, body.len()).await;
    w.write_body(Bytes::copy_from_slice(&body[..600]), false)
        .await
        .unwrap();
    let mut r = lookup(store, &id).await.expect("partial hit");
    let first = r.read_body().await.unwrap().unwrap();
    assert_eq!(&first[..], &body[..600], "bytes stream while the fill runs");

    w.write_body(Bytes::copy_from_slice(&body[600..]), true)
        .await
        .unwrap();
    // All bytes are written but not committed: the final byte is held back.
    let held = r.read_body().await.unwrap().unwrap();
    assert_eq!(&held[..], &body[600..999]);
    let reader = tokio::spawn(async move { read_all(&mut r).await });
    tokio::task::yield_now().await;
    assert!(!reader.is_finished());
    w.finish().await.unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), &body[999..]);
}

#[tokio::test]
async fn a_range_during_a_fill_waits_only_for_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(&body);
    let mut w = writer(store, &id, body.len()).await;
    w.write_body(Bytes::copy_from_slice(&body[..300]), false)
        .await
        .unwrap();
    let mut r = lookup(store, &id).await.unwrap();
    assert!(r.can_seek());
    r.seek(100, Some(200)).unwrap();
    assert_eq!(read_all(&mut r).await.unwrap(), &body[100..200]);
    drop(w);
}

#[tokio::test]
async fn a_dropped_writer_fails_its_readers_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(&body);
    let mut w = writer(store, &id, body.len()).await;
    w.write_body(Bytes::copy_from_slice(&body[..500]), false)
        .await
        .unwrap();
    let mut r = lookup(store, &id).await.unwrap();
    assert_eq!(r.read_body().await.unwrap().unwrap().len(), 500);
    drop(w); // upstream died mid-body
    assert!(
        r.read_body().await.is_err(),
        "a cut fill is an error, not EOF (pingora #932)"
    );
    assert!(!store.contains(&id));
    assert!(lookup(store, &id).await.is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn content_that_does_not_match_its_hash_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(1000);
    let id = lfs_id(b"something else");
    let mut w = writer(store, &id, body.len()).await;
    let mut r = {
        w.write_body(Bytes::copy_from_slice(&body[..10]), false)
            .await
            .unwrap();
        lookup(store, &id).await.unwrap()
    };
    w.write_body(Bytes::copy_from_slice(&body[10..]), true)
        .await
        .unwrap();
    assert!(w.finish().await.is_err());
    assert!(
        read_all(&mut r).await.is_err(),
        "readers never get the bad blob whole"
    );
    assert!(!store.contains(&id));
    assert_eq!(store.stats.integrity_failures.load(Ordering::Relaxed), 1);
    assert!(lookup(store, &id).await.is_none());
}

#[tokio::test]
async fn a_short_or_long_body_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = leak(dir.path());
    let body = data(100);
    let id = lfs_id(&body);
    let mut short = writer(store, &id, body.len()).await;
    short
        .write_body(Bytes::copy_from_slice(&body[..50]), true)
        .await
        .unwrap();
    assert!(short.finish().await.is_err());
    let mut long = writer(store, &id, 50).await;
    assert!(long.write_body(Bytes::from(body), true).await.is_err());
    drop(long);
    assert!(!store.contains(&id));
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
    let mut w = writer(store, &id, body.len()).await;
    w.write_body(Bytes::from(body.clone()), true).await.unwrap();
    w.finish().await.unwrap();
    let mut r = lookup(store, &id).await.unwrap();
    let span = Span::inactive().handle();
    let key = cache_key(&id).to_compact();
    let out = store
        .purge(PurgeTarget::Active(&key), PurgeType::Eviction, &span)
        .await
        .unwrap();
    assert_eq!(out, PurgeOutcome::Purged(None));
    assert!(!store.contains(&id));
    assert_eq!(read_all(&mut r).await.unwrap(), body);
    assert_eq!(store.stats.bytes.load(Ordering::Relaxed), 0);
}
