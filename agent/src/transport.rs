//! Frame I/O over QUIC streams, shared by the agent and the aggregator: read one frame with the
//! limits checked before the payload is read, write one frame.

use fleetwatch_common::codec::{self, CodecError, FrameLimits, HEADER_LEN};
use fleetwatch_common::protocol::Message;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The stream ended or failed.
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadExactError),
    /// The bytes were not a valid frame.
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
}

/// Reads exactly one frame from `recv`.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    limits: &FrameLimits,
) -> Result<Message, FrameReadError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let parsed = codec::decode_header(&header, limits)?;
    let mut payload = vec![0u8; parsed.payload_len as usize];
    recv.read_exact(&mut payload).await?;
    Ok(codec::decode_payload(&parsed, &payload)?)
}

/// Writes one already-encoded frame.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    frame: &[u8],
) -> Result<(), quinn::WriteError> {
    send.write_all(frame).await
}
