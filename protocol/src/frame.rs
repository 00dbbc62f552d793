//! Length-prefixed framing: a 4-byte big-endian body length, then the body.
//! tokio-util's `LengthDelimitedCodec` does the work; this module fixes its
//! parameters so the client and server agree.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{length_delimited::LengthDelimitedCodecError, LengthDelimitedCodec};

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

/// Bytes of small frames gathered before a write to the socket.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Writes the frame bodies arriving on `queue` to `writer` until the queue
/// closes, then closes the writer. Bodies already queued when one is written
/// go out with it under one flush, so a busy connection makes few syscalls.
/// Each body comes with a value `T` that is dropped once the body is flushed
/// (a server uses it to hold memory-budget permits until then).
///
/// Small frames are gathered in a 64 KiB buffer; a large body is written
/// from where it lies, never copied into a buffer that grows with what the
/// peer has not read, so the memory a slow reader holds is the bodies
/// themselves. A body over `frame_size_max_bytes` is refused as a frame the
/// peer could not read.
pub async fn write_queued_frames<W: AsyncWrite + Unpin, T>(
    writer: W,
    mut queue: mpsc::Receiver<(Bytes, T)>,
    frame_size_max_bytes: usize,
) -> io::Result<()> {
    let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    let mut held = Vec::new();
    while let Some(first) = queue.recv().await {
        // A peer that stops reading can't hold the node's memory forever.
        let batch = async {
            let mut next = Some(first);
            while let Some((body, hold)) = next.take() {
                write_frame(&mut writer, &body, frame_size_max_bytes).await?;
                held.push(hold);
                next = queue.try_recv().ok();
            }
            writer.flush().await
        };
        tokio::time::timeout(FLUSH_TIMEOUT, batch)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer did not read for 30 s"))??;
        held.clear();
    }
    writer.shutdown().await
}

/// Writes one frame: its length, then its body.
async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
    frame_size_max_bytes: usize,
) -> io::Result<()> {
    if body.len() > frame_size_max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds the limit of {frame_size_max_bytes}",
                body.len()
            ),
        ));
    }
    let length = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    writer.write_all(&length.to_be_bytes()).await?;
    writer.write_all(body).await
}
