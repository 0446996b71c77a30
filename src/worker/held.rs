//! Input messages kept in memory: those of a partition running ahead of its group's
//! watermark ([`super::flow`]), those fetched for a group that is being restored or is on
//! the checkpoint thread, and those taken from the consumer for the next batch
//! ([`super::batch`]).
//!
//! A catch-up holds many: a fetch hands over megabytes of one partition before the
//! next, and the partitions behind in event time go first. A queue keeps its payloads
//! back to back in one buffer that is reused, not one allocation (and a copy of the
//! topic name and headers) per message: holding was a sixth of the poll thread's time
//! as `OwnedMessage`s, most of it in the allocator and in page faults.

use std::collections::VecDeque;
use std::ops::Range;

use super::forward::Forwarded;
use crate::codec::DecodeError;
use crate::model::Event;

/// A buffer is compacted once this many bytes at its front have been read (and they are
/// at least half of it).
const COMPACT_AT: usize = 1 << 20;

/// Buffer capacity an emptied queue keeps for the next lead (16 input partitions keep
/// at most 32 MiB between leads).
const KEEP: usize = 2 << 20;

/// What a held message is besides its payload: where it was read, the re-key stage's
/// header, and the payload decoded if it was already (see [`super::batch`]).
pub(super) struct Held {
    pub(super) offset: i64,
    pub(super) fwd: Option<Forwarded>,
    pub(super) decoded: Option<Result<Event, DecodeError>>,
}

/// Messages in arrival order: what each is (`T`) and its payload.
pub(super) struct Queue<T = Held> {
    /// Payloads back to back; the front message's starts at `head`.
    buf: Vec<u8>,
    head: usize,
    entries: VecDeque<(usize, T)>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue { buf: Vec::new(), head: 0, entries: VecDeque::new() }
    }
}

impl<T> Queue<T> {
    pub(super) fn push(&mut self, what: T, payload: &[u8]) {
        if self.entries.is_empty() {
            // Everything was read: start over at the front, keeping the capacity.
            self.buf.clear();
            self.head = 0;
        } else if self.head >= COMPACT_AT && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(payload);
        self.entries.push_back((payload.len(), what));
    }

    /// The front message, and where its payload lies in [`Queue::payload`] (valid until
    /// the next `push`).
    pub(super) fn pop(&mut self) -> Option<(T, Range<usize>)> {
        let (len, what) = self.entries.pop_front()?;
        let range = self.head..self.head + len;
        self.head += len;
        Some((what, range))
    }

    /// The payload of a popped message (`range` from [`Queue::pop`]).
    pub(super) fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Gives back memory beyond [`KEEP`] once everything is read.
    pub(super) fn trim(&mut self) {
        if self.entries.is_empty() && self.buf.capacity() > KEEP {
            self.buf.clear();
            self.head = 0;
            self.buf.shrink_to(KEEP);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every message, front first, with its payload.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&mut T, &[u8])> {
        let mut start = self.head;
        let buf = &self.buf;
        self.entries.iter_mut().map(move |(len, what)| {
            let payload = &buf[start..start + *len];
            start += *len;
            (what, payload)
        })
    }

    /// Payload bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.buf.len() - self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Queue) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((held, range)) = q.pop() {
            out.push((held.offset, q.payload(range).to_vec()));
        }
        out
    }

    fn push(q: &mut Queue, offset: i64, payload: &[u8], fwd: Option<Forwarded>) {
        q.push(Held { offset, fwd, decoded: None }, payload);
    }

    fn pop(q: &mut Queue) -> Option<(i64, Option<Forwarded>, Vec<u8>)> {
        let (held, range) = q.pop()?;
        Some((held.offset, held.fwd, q.payload(range).to_vec()))
    }

    #[test]
    fn messages_come_back_in_order_with_their_payloads_and_headers() {
        let mut q = Queue::default();
        let mark = Forwarded::Mark { source: 2, max_ts: Some(7), idle: false };
        push(&mut q, 10, b"first", None);
        push(&mut q, 11, b"", Some(mark.clone()));
        push(&mut q, 12, b"third", None);
        assert_eq!((q.bytes(), q.len()), (10, 3));
        assert_eq!(pop(&mut q), Some((10, None, b"first".to_vec())));
        assert_eq!(pop(&mut q), Some((11, Some(mark), b"".to_vec())));
        assert_eq!((q.bytes(), q.len()), (5, 1));
        assert!(!q.is_empty());
        assert_eq!(drain(&mut q), vec![(12, b"third".to_vec())]);
        assert!(q.is_empty() && q.bytes() == 0);
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_queue_read_while_written_keeps_every_payload_through_compaction() {
        let mut q = Queue::default();
        let payload = |n: i64| format!("{n:0>1000}").into_bytes();
        let (mut next_in, mut next_out) = (0, 0);
        // Write three, read two, so the front is read while the back grows, past
        // several compactions; then read the rest.
        for _ in 0..3_000 {
            for _ in 0..3 {
                push(&mut q, next_in, &payload(next_in), None);
                next_in += 1;
            }
            for _ in 0..2 {
                let (offset, _, bytes) = pop(&mut q).unwrap();
                assert_eq!((offset, bytes), (next_out, payload(next_out)));
                next_out += 1;
            }
        }
        assert_eq!(q.bytes(), (next_in - next_out) as usize * 1000);
        assert!(q.buf.len() < 2 * q.bytes() + 2 * COMPACT_AT, "compacted: {} bytes for {}", q.buf.len(), q.bytes());
        for (offset, bytes) in drain(&mut q) {
            assert_eq!((offset, bytes), (next_out, payload(next_out)));
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
    }
}
