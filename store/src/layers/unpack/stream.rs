//! The first stage of unpack: detect the compression from magic bytes,
//! decompress and count the uncompressed bytes, and hand them in large
//! chunks to the tar stage running on another thread, which hashes them as
//! it receives them (decompression is the heavier half; this balances the
//! two threads).
//!
//! Memory is bounded: a fixed pool of [`CHUNKS`] buffers of [`CHUNK_SIZE`]
//! bytes circulates between the two stages, whatever the layer size.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{Receiver, SyncSender};

use sha2::{Digest as _, Sha256};

/// Bytes per chunk handed from the decompressor to the tar stage.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Chunks in flight at most.
pub const CHUNKS: usize = 4;

/// Compression of a layer stream, recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// An uncompressed tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Recognises the compression from the first bytes of a stream.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A message from the decompressing stage to the tar stage.
pub enum Msg {
    /// Uncompressed bytes (the whole vector).
    Data(Vec<u8>),
    /// The first stage failed; stop at once.
    Abort,
}

/// What the first stage saw of the uncompressed stream.
pub struct Summary {
    /// Number of uncompressed bytes.
    pub size: u64,
}

/// Reads `reader` to its end, decompressing, hashing and sending chunks.
///
/// Returns early (with what it has hashed so far) if the tar stage hangs up:
/// the tar stage only hangs up on error, after draining on success.
pub fn produce(
    reader: impl Read,
    tx: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
) -> io::Result<Summary> {
    let result = produce_inner(reader, &tx, free);
    if result.is_err() {
        let _ = tx.send(Msg::Abort);
    }
    result
}

fn produce_inner(
    reader: impl Read,
    tx: &SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
) -> io::Result<Summary> {
    let mut input = BufReader::with_capacity(256 << 10, reader);
    let compression = Compression::detect(input.fill_buf()?);
    let mut decoded: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Compression::None => Box::new(input),
    };
    let mut size = 0u64;
    let mut allocated = 0;
    loop {
        let mut buf = match free.try_recv() {
            Ok(buf) => buf,
            Err(_) if allocated < CHUNKS => {
                allocated += 1;
                vec![0; CHUNK_SIZE]
            }
            Err(_) => match free.recv() {
                Ok(buf) => buf,
                // The tar stage is gone: it failed.
                Err(_) => break,
            },
        };
        buf.resize(CHUNK_SIZE, 0);
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            match decoded.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        size += filled as u64;
        if tx.send(Msg::Data(buf)).is_err() {
            break;
        }
    }
    Ok(Summary { size })
}

/// The tar stage's view of the stream: a `Read` over the chunks received.
pub struct ChannelReader {
    rx: Receiver<Msg>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    eof: bool,
    hasher: Sha256,
}

impl ChannelReader {
    /// A reader over the chunks of `rx`, returning spent buffers to `free`.
    pub fn new(rx: Receiver<Msg>, free: SyncSender<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            free,
            current: Vec::new(),
            pos: 0,
            eof: false,
            hasher: Sha256::new(),
        }
    }

    /// Makes `current` non-empty unless at the end; false at the end.
    fn refill(&mut self) -> io::Result<bool> {
        while self.pos == self.current.len() {
            if self.eof {
                return Ok(false);
            }
            let spent = std::mem::take(&mut self.current);
            if spent.capacity() > 0 {
                let _ = self.free.try_send(spent);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Msg::Data(buf)) => {
                    self.hasher.update(&buf);
                    self.current = buf;
                }
                Ok(Msg::Abort) => {
                    self.eof = true;
                    return Err(io::Error::other("the layer stream failed"));
                }
                Err(_) => {
                    self.eof = true;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// sha256 of every byte received (call after [`ChannelReader::drain`]).
    pub fn digest(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }

    /// Consumes the rest of the stream (padding after the end-of-archive
    /// marker) so that the first stage hashes all of it.
    pub fn drain(&mut self) -> io::Result<()> {
        self.pos = self.current.len();
        while self.refill()? {
            self.pos = self.current.len();
        }
        Ok(())
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/\0\0"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }
}
