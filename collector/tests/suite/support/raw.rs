//! A client that sends arbitrary bytes as frames.
use clinicwatch_proto::v1::ServerFrame;
use prost::{bytes::BufMut as _, Message as _};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Status,
};

#[derive(Default)]
pub struct Raw;
pub struct Enc;
pub struct Dec;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = ServerFrame;
    type Encoder = Enc;
    type Decoder = Dec;
    fn encoder(&mut self) -> Enc {
        Enc
    }
    fn decoder(&mut self) -> Dec {
        Dec
    }
}

impl Encoder for Enc {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Dec {
    type Item = ServerFrame;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ServerFrame>, Status> {
        ServerFrame::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Sends `frames` as they are; the status that ends the stream (Ok if it ends cleanly).
pub async fn send(ch: tonic::transport::Channel, frames: Vec<Vec<u8>>) -> Result<usize, Status> {
    let mut g = tonic::client::Grpc::new(ch).max_encoding_message_size(64 << 20);
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/clinicwatch.v1.Ingest/Stream");
    let mut replies = g
        .streaming(tonic::Request::new(tokio_stream::iter(frames)), path, Raw)
        .await?
        .into_inner();
    let mut n = 0;
    while replies.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}
