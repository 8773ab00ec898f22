use futures::io::Cursor;
use palaver_protocol::codec;
use palaver_protocol::crypto::file::{CHUNK_LEN, FileKey};
use palaver_protocol::wire::TransferId;
use rand::{RngCore, SeedableRng};

use super::*;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// A file of `len` random bytes in `dir`, kept for offering, and its offer.
fn offered(dir: &Path, len: usize) -> (Vec<u8>, Kept, FileOffer) {
    let bytes = random_bytes(len, len as u64);
    let source = dir.join("source.bin");
    std::fs::write(&source, &bytes).unwrap();
    let kept = keep_copy(&source, &dir.join("sent"), u64::MAX).unwrap();
    let offer = FileOffer {
        transfer: TransferId([1; 16]),
        name: "source.bin".into(),
        size: kept.size,
        mime: "application/octet-stream".into(),
        sha256: kept.sha256,
        key: FileKey::from_bytes([2; 32]),
    };
    (bytes, kept, offer)
}

/// What the server writes for a fetch from `from_chunk`.
async fn served(kept: &Kept, offer: &FileOffer, from_chunk: u64) -> Vec<u8> {
    let mut out = Vec::new();
    serve(&mut out, &kept.path, offer, from_chunk, |_| {})
        .await
        .unwrap();
    out
}

async fn fetched(
    stream: Vec<u8>,
    offer: &FileOffer,
    from_chunk: u64,
    partial: &Path,
) -> (Result<[u8; 32], TransferError>, Vec<u64>, FileFetch) {
    let mut request = Vec::new();
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reported = reports.clone();
    let result = fetch(
        &mut Cursor::new(stream),
        &mut request,
        offer,
        from_chunk,
        partial,
        move |through| reported.lock().unwrap().push(through),
    )
    .await;
    let asked = read_frame(&mut Cursor::new(request)).await.unwrap();
    let reports = reports.lock().unwrap().clone();
    (result, reports, asked)
}

#[tokio::test]
async fn a_file_arrives_byte_identical_and_is_reported_as_it_becomes_durable() {
    let dir = tempfile::tempdir().unwrap();
    let every = SYNC_EVERY as usize;
    let len = (every + 4) * CHUNK_LEN + 12_345;
    let (bytes, kept, offer) = offered(dir.path(), len);
    assert_eq!(
        std::fs::read(&kept.path).unwrap(),
        bytes,
        "the copy is the file"
    );
    let partial = dir.path().join("partial");
    let stream = served(&kept, &offer, 0).await;
    let (result, reports, asked) = fetched(stream, &offer, 0, &partial).await;
    assert_eq!(result.unwrap(), offer.sha256, "hashed as it was written");
    assert_eq!(asked.from_chunk, 0);
    assert_eq!(reports, [SYNC_EVERY, SYNC_EVERY + 5]);
    assert_eq!(hash_file(&partial).unwrap(), offer.sha256);
    let placed = move_into_place(&partial, &dir.path().join("files"), "source.bin").unwrap();
    assert_eq!(std::fs::read(&placed).unwrap(), bytes);
    assert!(!partial.exists());
}

#[tokio::test]
async fn a_fetch_cut_short_resumes_from_its_last_durable_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let every = SYNC_EVERY as usize;
    let (bytes, kept, offer) = offered(dir.path(), (2 * every + every / 2) * CHUNK_LEN);
    let partial = dir.path().join("partial");
    // The connection drops a few chunks past the first sync: those up to it were reported
    // durable.
    let mut stream = served(&kept, &offer, 0).await;
    let frame_len = 4 + codec::encode(&FileFrame::Chunk {
        index: 0,
        sealed: vec![0; CHUNK_LEN + 16],
    })
    .unwrap()
    .len();
    stream.truncate((every + 4) * frame_len + 7);
    let (result, reports, _) = fetched(stream, &offer, 0, &partial).await;
    assert!(matches!(result, Err(TransferError::Io(_))), "{result:?}");
    assert_eq!(reports, [SYNC_EVERY]);
    let stream = served(&kept, &offer, SYNC_EVERY).await;
    let (result, reports, asked) = fetched(stream, &offer, SYNC_EVERY, &partial).await;
    assert_eq!(
        result.unwrap(),
        offer.sha256,
        "the part already there hashed too"
    );
    let (twice, all) = (2 * SYNC_EVERY, offer.shape().chunks());
    assert_eq!((asked.from_chunk, reports), (SYNC_EVERY, vec![twice, all]));
    assert_eq!(std::fs::read(&partial).unwrap(), bytes);
}

#[tokio::test]
async fn a_corrupted_or_misplaced_chunk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, kept, offer) = offered(dir.path(), 3 * CHUNK_LEN);
    let partial = dir.path().join("partial");
    let mut stream = served(&kept, &offer, 0).await;
    // A bit flipped inside the second chunk's ciphertext.
    stream[2 * (4 + 20) + CHUNK_LEN + 100] ^= 1;
    let (result, reports, _) = fetched(stream, &offer, 0, &partial).await;
    assert!(
        matches!(result, Err(TransferError::BadChunk(1))),
        "{result:?}"
    );
    assert!(reports.is_empty());
    // Chunks from the wrong place: what the server sends from 1 is not what starts at 0.
    let stream = served(&kept, &offer, 1).await;
    let (result, _, _) = fetched(stream, &offer, 0, &partial).await;
    assert!(matches!(
        result,
        Err(TransferError::OutOfOrder {
            expected: 0,
            got: 1
        })
    ));
    // Another file's key opens nothing.
    let other = FileOffer {
        key: FileKey::from_bytes([3; 32]),
        ..offer.clone()
    };
    let stream = served(&kept, &other, 0).await;
    let (result, _, _) = fetched(stream, &offer, 0, &partial).await;
    assert!(matches!(result, Err(TransferError::BadChunk(0))));
}

#[tokio::test]
async fn a_file_that_changed_is_refused_and_the_fetcher_hears_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_, kept, offer) = offered(dir.path(), 1000);
    std::fs::write(&kept.path, b"shorter").unwrap();
    let mut out = Vec::new();
    let served = serve(&mut out, &kept.path, &offer, 0, |_| {}).await;
    assert!(matches!(served, Err(TransferError::SourceChanged(_))));
    let (result, _, _) = fetched(out, &offer, 0, &dir.path().join("partial")).await;
    assert!(
        matches!(&result, Err(TransferError::Refused(why)) if why.contains("7 bytes")),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read() {
    let mut stream = ((MAX_FILE_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    stream.extend([0; 16]);
    let result = read_frame::<_, FileFrame>(&mut Cursor::new(stream)).await;
    assert!(matches!(result, Err(TransferError::Frame(why)) if why.contains("limit")));
}

#[test]
fn a_moved_file_never_overwrites_and_a_copy_keeps_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    let mut placed = Vec::new();
    for content in ["one", "two", "three"] {
        let partial = dir.path().join("partial");
        std::fs::write(&partial, content).unwrap();
        placed.push(move_into_place(&partial, &files, "notes.txt").unwrap());
    }
    let names: Vec<_> = placed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["notes.txt", "notes (1).txt", "notes (2).txt"]);
    assert_eq!(std::fs::read_to_string(&placed[0]).unwrap(), "one");
    let source = dir.path().join("big");
    std::fs::write(&source, [0; 100]).unwrap();
    let err = keep_copy(&source, &dir.path().join("sent"), 99).unwrap_err();
    assert!(err.to_string().contains("over the 99-byte limit"), "{err}");
    assert!(free_space(dir.path()).unwrap() > 0);
}
