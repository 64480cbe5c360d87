//! A bounded in-memory pipe from a download to an unpacker running on
//! another thread, that never lets the unpacker see the end of an unverified
//! blob.
//!
//! The writer holds back the last chunk it was given; only when the blob's
//! digest has been verified ([`TeeWriter::finish`] with `Ok`) does the
//! reader get that chunk and end-of-file. On a failed verification the reader
//! gets an error instead, so the unpack fails and the store discards its temp
//! dir: an unverified layer never becomes a layer dir.
//!
//! Layers unpack in order (a layer's hardlinks may point into its parent), so
//! the reader of layer N may start late. Until it starts, chunks queue up to
//! `budget` bytes; past that the tee is abandoned and the layer is unpacked
//! from the committed blob instead. Once the reader runs, a full queue makes
//! the writer wait (back-pressure). A reader that goes away (the layer turned
//! out to be present already, or the unpack failed) releases the writer.

use lamina_registry::Bytes;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    queued: u64,
    held: Option<Bytes>,
    end: Option<Result<(), String>>,
    /// None until the writer decides to stream (true) or not (false).
    streaming: Option<bool>,
    reader_started: bool,
    reader_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    budget: u64,
}

/// The writing end (the download side).
#[derive(Clone)]
pub struct TeeWriter(Arc<Shared>);

/// The reading end; see [`TeeWriter::reader`].
pub struct TeeReader(Arc<Shared>);

/// A new tee with `budget` bytes of queue before the reader starts.
pub fn tee(budget: u64) -> TeeWriter {
    TeeWriter(Arc::new(Shared {
        state: Mutex::new(State::default()),
        cond: Condvar::new(),
        budget,
    }))
}

impl TeeWriter {
    /// The bytes will come from the start of the blob: the reader may stream.
    pub fn begin(&self) {
        self.0.state.lock().unwrap().streaming = Some(true);
        self.0.cond.notify_all();
    }

    /// No stream (resumed download, or nothing to unpack): the reader gets
    /// `None` and unpacks from the committed blob.
    pub fn abandon(&self) {
        let mut s = self.0.state.lock().unwrap();
        if !s.reader_started {
            s.streaming = Some(false);
            s.queue.clear();
            s.held = None;
        } else if s.end.is_none() {
            s.end = Some(Err("download abandoned".into()));
        }
        drop(s);
        self.0.cond.notify_all();
    }

    /// Passes a chunk on (holding back the latest one).
    pub fn push(&self, chunk: Bytes) {
        let mut s = self.0.state.lock().unwrap();
        if s.streaming != Some(true) || s.reader_gone {
            return;
        }
        if let Some(prev) = s.held.replace(chunk) {
            s.queued += prev.len() as u64;
            s.queue.push_back(prev);
            self.0.cond.notify_all();
        }
        while s.queued > self.0.budget && !s.reader_gone {
            if !s.reader_started {
                s.streaming = Some(false);
                s.queue.clear();
                s.held = None;
                s.queued = 0;
                self.0.cond.notify_all();
                return;
            }
            s = self.0.cond.wait(s).unwrap();
        }
    }

    /// Ends the stream: `Ok` releases the held chunk and EOF, `Err` fails the reader.
    pub fn finish(&self, result: Result<(), String>) {
        let mut s = self.0.state.lock().unwrap();
        match result {
            Ok(()) => {
                if let Some(last) = s.held.take() {
                    s.queued += last.len() as u64;
                    s.queue.push_back(last);
                }
                s.end = Some(Ok(()));
            }
            Err(e) => {
                s.held = None;
                s.end = Some(Err(e));
            }
        }
        if s.streaming.is_none() {
            s.streaming = Some(false);
        }
        drop(s);
        self.0.cond.notify_all();
    }

    /// Waits for the writer's decision; `Some(reader)` when the bytes stream.
    pub fn reader(&self) -> Option<TeeReader> {
        let mut s = self.0.state.lock().unwrap();
        while s.streaming.is_none() {
            s = self.0.cond.wait(s).unwrap();
        }
        if s.streaming != Some(true) {
            return None;
        }
        s.reader_started = true;
        Some(TeeReader(self.0.clone()))
    }
}

impl io::Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut s = self.0.state.lock().unwrap();
        loop {
            if let Some(front) = s.queue.front_mut() {
                let n = buf.len().min(front.len());
                let part = front.split_to(n);
                buf[..n].copy_from_slice(&part);
                if front.is_empty() {
                    s.queue.pop_front();
                }
                s.queued -= n as u64;
                self.0.cond.notify_all();
                return Ok(n);
            }
            match &s.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e.clone())),
                None => s = self.0.cond.wait(s).unwrap(),
            }
        }
    }
}

impl Drop for TeeReader {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        s.reader_gone = true;
        s.queue.clear();
        s.held = None;
        s.queued = 0;
        drop(s);
        self.0.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn last_chunk_only_after_verification() {
        let w = tee(1 << 20);
        w.begin();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            let mut r = w2.reader().unwrap();
            let mut out = Vec::new();
            let res = r.read_to_end(&mut out);
            (out, res.is_ok())
        });
        w.push(Bytes::from_static(b"abc"));
        w.push(Bytes::from_static(b"def"));
        w.finish(Ok(()));
        let (out, ok) = t.join().unwrap();
        assert_eq!((out.as_slice(), ok), (&b"abcdef"[..], true));

        let w = tee(1 << 20);
        w.begin();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            let res = w2.reader().unwrap().read_to_end(&mut out);
            (out, res.is_err())
        });
        w.push(Bytes::from_static(b"abc"));
        w.push(Bytes::from_static(b"def"));
        w.finish(Err("digest mismatch".into()));
        let (out, failed) = t.join().unwrap();
        assert!(failed);
        assert_eq!(out, b"abc", "the held-back tail never reaches the reader");
    }

    #[test]
    fn abandons_past_budget_before_reader_starts() {
        let w = tee(4);
        w.begin();
        for _ in 0..4 {
            w.push(Bytes::from_static(b"xyz"));
        }
        assert!(w.reader().is_none());
        let w = tee(4);
        w.abandon();
        assert!(w.reader().is_none());
    }
}
