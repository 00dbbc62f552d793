//! Length-prefixed framing: a 4-byte big-endian body length, then the body.
//! tokio-util's `LengthDelimitedCodec` does the work; this module fixes its
//! parameters so the client and server agree.

use std::io;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::{
    length_delimited::LengthDelimitedCodecError, FramedWrite, LengthDelimitedCodec,
};

/// How long a write may wait for the peer to read before the connection is dropped.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Default limit on a frame body, in bytes.
pub const FRAME_SIZE_DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The codec for frames of at most `frame_size_max_bytes`.
pub fn codec(frame_size_max_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(frame_size_max_bytes)
        .new_codec()
}

/// Whether a read error is the codec refusing a frame over the limit.
pub fn is_frame_too_large(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

/// Writes the frame bodies arriving on `queue` to `writer` until the queue
/// closes, then closes the writer. Bodies already queued when one is written
/// go out with it under one flush, so a busy connection makes few syscalls.
/// Each body comes with a value `T` that is dropped once the body is flushed
/// (a server uses it to hold memory-budget permits until then).
pub async fn write_queued_frames<W: AsyncWrite + Unpin, T>(
    writer: W,
    mut queue: mpsc::Receiver<(Bytes, T)>,
    frame_size_max_bytes: usize,
) -> io::Result<()> {
    let mut sink = FramedWrite::new(writer, codec(frame_size_max_bytes));
    let mut held = Vec::new();
    while let Some((body, hold)) = queue.recv().await {
        sink.feed(body).await?;
        held.push(hold);
        while let Ok((body, hold)) = queue.try_recv() {
            sink.feed(body).await?;
            held.push(hold);
        }
        // A peer that stops reading can't hold the node's memory forever.
        tokio::time::timeout(FLUSH_TIMEOUT, SinkExt::<Bytes>::flush(&mut sink))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer did not read for 30 s"))??;
        held.clear();
    }
    SinkExt::<Bytes>::close(&mut sink).await
}
