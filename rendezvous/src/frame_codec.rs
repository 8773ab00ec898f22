//! A libp2p request-response codec for Palaver's frames, shared by the server and the node.
//!
//! One request or response per stream: the writer sends one codec frame and closes; the reader
//! reads at most the protocol's limit and decodes with [`palaver_protocol::codec`]. Anything over
//! the limit or malformed is an `InvalidData` error, which request-response reports as a failed
//! inbound or outbound request — never a panic, never an unbounded buffer.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use palaver_protocol::codec;
use serde::{Serialize, de::DeserializeOwned};

/// Reads and writes `Req` and `Resp` frames, each bounded by its own limit.
#[derive(Debug)]
pub struct FrameCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FrameCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.max_request, self.max_response)
    }
}

async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let mut frame = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut frame).await?;
    codec::decode_bounded(&frame, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode_frame<M: Serialize>(value: &M, max: usize) -> io::Result<Vec<u8>> {
    let frame = codec::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if frame.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes is over this protocol's {max}-byte limit",
                frame.len()
            ),
        ));
    }
    Ok(frame)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    frame: io::Result<Vec<u8>>,
) -> io::Result<()> {
    io.write_all(&frame?).await?;
    io.close().await
}

impl<Req, Resp> Codec for FrameCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, encode_frame(&req, self.max_request)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, encode_frame(&resp, self.max_response)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_frame_round_trips_through_the_codec() {
        let mut codec = FrameCodec::<Vec<u8>, String>::new(64, 64);
        let protocol = StreamProtocol::new("/test/1");
        let mut buf = Cursor::new(Vec::new());
        block_on(codec.write_request(&protocol, &mut buf, vec![1, 2, 3])).unwrap();
        let mut read = Cursor::new(buf.into_inner());
        assert_eq!(
            block_on(codec.read_request(&protocol, &mut read)).unwrap(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn an_oversized_or_garbage_frame_is_invalid_data() {
        let mut codec = FrameCodec::<Vec<u8>, String>::new(8, 8);
        let protocol = StreamProtocol::new("/test/1");
        let mut big = Cursor::new(vec![1u8; 10_000]);
        let err = block_on(codec.read_request(&protocol, &mut big)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut garbage = Cursor::new(vec![1u8, 0xff, 0xff]);
        let err = block_on(codec.read_response(&protocol, &mut garbage)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut out = Cursor::new(Vec::new());
        let err = block_on(codec.write_request(&protocol, &mut out, vec![0; 100])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
