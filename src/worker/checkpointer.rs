//! Checkpoints encoded off the poll thread (issue 9).
//!
//! A checkpoint writes every shopper changed since the previous one; encoding them took
//! the poll thread 1.3 s under load for 25,793 shoppers, during which no message was
//! polled and every group's records waited. Now [`super::Core::start_commit`] hands each
//! group due for a checkpoint, whole ([`Task`]), to this thread, which takes the group's
//! changes ([`checkpoint_items`]) and hands the group back with the records. Meanwhile
//! the poll thread goes on polling and processing the other groups; the messages of a
//! group that is away are held, as for a group being restored, and processed once it is
//! back. The commit in progress waits for every checkpoint it started before it
//! completes ([`super::Core::advance_commit`]), so what a transaction holds is exactly
//! what it held when checkpoints were encoded inline.
//!
//! A generation number, bumped when an abort or a revocation throws state away, drops
//! results that come back after that.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::state::{checkpoint_items, StateItem};
use super::task::Task;
use super::WorkerError;

/// A checkpoint to encode.
struct Job {
    generation: u64,
    partition: i32,
    task: Box<Task>,
    /// The first log entry the checkpoint covers is the one after this.
    covered_from: u64,
}

/// A group back from the checkpoint thread.
pub(super) struct Done {
    pub generation: u64,
    pub partition: i32,
    pub task: Box<Task>,
    /// The checkpoint's state-topic records, in the order they are written.
    pub items: Vec<StateItem>,
    pub took: Duration,
}

/// The checkpoint thread, and the poll thread's handle on it.
pub(super) struct Checkpointer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    /// Results of an older generation are dropped.
    generation: u64,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread; `inputs` are the input topics named in every group record.
    pub fn spawn(inputs: Vec<String>) -> Result<Checkpointer, WorkerError> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("attrib-checkpoint".into())
            .spawn(move || {
                for mut job in job_rx {
                    let started = Instant::now();
                    let items = checkpoint_items(&mut job.task.state, &inputs, job.covered_from);
                    let done = Done {
                        generation: job.generation,
                        partition: job.partition,
                        task: job.task,
                        items,
                        took: started.elapsed(),
                    };
                    if done_tx.send(done).is_err() {
                        return; // the worker is gone
                    }
                }
            })
            .map_err(|e| WorkerError::Setup(format!("starting the checkpoint thread: {e}")))?;
        Ok(Checkpointer { jobs: Some(jobs), done, generation: 0, thread: Some(thread) })
    }

    /// Hands group `partition` over for its checkpoint.
    pub fn send(&self, partition: i32, task: Box<Task>, covered_from: u64) -> Result<(), WorkerError> {
        let job = Job { generation: self.generation, partition, task, covered_from };
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| WorkerError::Setup("the checkpoint thread ended unexpectedly".into()))
    }

    /// The next group back, of this generation: waiting for it with `wait`, else only if
    /// one is there.
    pub fn next(&self, wait: bool) -> Result<Option<Done>, WorkerError> {
        loop {
            let done = if wait {
                match self.done.recv() {
                    Ok(done) => done,
                    Err(_) => return Err(WorkerError::Setup("the checkpoint thread ended unexpectedly".into())),
                }
            } else {
                match self.done.try_recv() {
                    Ok(done) => done,
                    Err(mpsc::TryRecvError::Empty) => return Ok(None),
                    Err(mpsc::TryRecvError::Disconnected) => {
                        return Err(WorkerError::Setup("the checkpoint thread ended unexpectedly".into()))
                    }
                }
            };
            if done.generation == self.generation {
                return Ok(Some(done));
            }
            // Thrown away by an abort or a revocation meanwhile.
        }
    }

    /// Drops every checkpoint in flight: their groups come back and are thrown away.
    pub fn cancel(&mut self) {
        self.generation += 1;
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.jobs = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Discard, Processing};
    use crate::worker::task::{Partitioner, Routing, TaskState};

    const ROUTING: Routing = Routing { partition: 0, partitioner: Partitioner::Murmur2, partitions: 1, sources: 0 };

    /// A group that has seen a few touches and a purchase, at log entry 2.
    fn group(shoppers: u32) -> Box<Task> {
        let mut state = TaskState::new(Processing::default(), 1, ROUTING);
        state.pipeline.engine_mut().track_changes(true);
        for u in 0..shoppers {
            let lines = [
                format!(r#"{{"type":"click","event_id":"k{u}","ts":1000,"user_id":"u{u}","creator_id":"c1"}}"#),
                format!(
                    r#"{{"type":"purchase","event_id":"o{u}","ts":2000,"user_id":"u{u}","order_id":"ord{u}","currency":"USD","items":[{{"product_id":"p","quantity":1,"unit_price":1000}}]}}"#
                ),
            ];
            for (i, line) in lines.iter().enumerate() {
                let offset = i64::from(u) * 2 + i as i64;
                state.on_message(0, "in", ROUTING, offset, line.as_bytes(), None, None, 0, 0, &mut Discard);
            }
        }
        state.seq = 2;
        Box::new(Task::new(ROUTING, state, None))
    }

    #[test]
    fn a_checkpoint_made_on_the_thread_equals_one_made_inline() {
        let inputs = vec!["in".to_string()];
        let mut inline = group(50);
        let expected = checkpoint_items(&mut inline.state, &inputs, 0);
        assert!(expected.len() > 50, "a shopper record each, the log tombstones and the group record");
        let checkpointer = Checkpointer::spawn(inputs).unwrap();
        checkpointer.send(3, group(50), 0).unwrap();
        let done = checkpointer.next(true).unwrap().expect("the group comes back");
        assert_eq!(done.partition, 3);
        assert_eq!(done.items, expected);
        // The changes were taken: the next checkpoint holds none of the shoppers.
        let mut task = done.task;
        assert!(task.state.pipeline.engine_mut().take_changes().upserts.is_empty());
    }

    #[test]
    fn a_cancelled_checkpoint_never_comes_back() {
        let mut checkpointer = Checkpointer::spawn(vec!["in".into()]).unwrap();
        checkpointer.send(1, group(5), 0).unwrap();
        checkpointer.cancel();
        checkpointer.send(2, group(5), 0).unwrap();
        let done = checkpointer.next(true).unwrap().expect("the second group comes back");
        assert_eq!((done.partition, done.generation), (2, 1));
        assert!(checkpointer.next(false).unwrap().is_none(), "the cancelled group's result was dropped");
    }
}
