//! ByteStream Write, its resumption after an interrupted stream, and
//! QueryWriteStatus, against the service itself.

use tonic::Code;

use super::{Harness, as_caller, user};
use crate::digest::Digest;
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::byte_stream_server::ByteStream as _;
use crate::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};

fn chunk(name: &str, data: &[u8], offset: usize, finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_owned(),
        write_offset: offset as i64,
        finish_write: finish,
        data: data.to_vec().into(),
    }
}

async fn query(h: &Harness, name: &str) -> Result<(i64, bool), Code> {
    let svc = crate::service::bytestream::ByteStreamService::new(h.ctx.clone());
    svc.query_write_status(as_caller(
        &user(1000, false),
        QueryWriteStatusRequest {
            resource_name: name.to_owned(),
        },
    ))
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.committed_size, r.complete)
    })
    .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_write_resumes_where_query_write_status_says() {
    let h = Harness::new("");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let d = Digest::of_bytes(&data);
    let name = format!(
        "uploads/6a1c0e2e-0000-4000-8000-000000000001/blobs/{}/{}",
        d.hex(),
        d.size()
    );
    let ch = h.bytestream_channel(user(1000, false)).await;
    let mut client = ByteStreamClient::new(ch);

    assert_eq!(
        query(&h, &name).await,
        Err(Code::NotFound),
        "nothing written yet"
    );

    // The first 100,000 bytes, then the stream ends without finish_write.
    let first = vec![chunk(&name, &data[..100_000], 0, false)];
    let err = client
        .write(tokio_stream::iter(first))
        .await
        .expect_err("a stream without finish_write is not a finished write");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(query(&h, &name).await, Ok((100_000, false)));

    // The rest, from where the service says it stands.
    let rest = vec![
        chunk(&name, &data[100_000..200_000], 100_000, false),
        chunk(&name, &data[200_000..], 200_000, true),
    ];
    let done = client.write(tokio_stream::iter(rest)).await.unwrap();
    assert_eq!(done.into_inner().committed_size, data.len() as i64);
    assert_eq!(query(&h, &name).await, Ok((data.len() as i64, true)));

    // What was stored is what was sent.
    let mut read = client
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hex(), d.size()),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(m) = read.message().await.unwrap() {
        back.extend_from_slice(&m.data);
    }
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_do_not_hash_to_the_digest_are_refused_and_not_resumable() {
    let h = Harness::new("");
    let d = Digest::of_bytes(b"the real content");
    let name = format!(
        "uploads/6a1c0e2e-0000-4000-8000-000000000002/blobs/{}/{}",
        d.hex(),
        d.size()
    );
    let mut client = ByteStreamClient::new(h.bytestream_channel(user(1000, false)).await);
    let err = client
        .write(tokio_stream::iter(vec![chunk(
            &name,
            b"a poisoned blob!",
            0,
            true,
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!h.ctx.store.contains(&d).unwrap());
    assert_eq!(query(&h, &name).await, Err(Code::NotFound));
}
