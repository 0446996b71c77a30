//! The watermark over several inputs (SPEC §5).
//!
//! Each input's watermark is the largest event time it has shown minus
//! `max_out_of_orderness`; the combined watermark is the minimum over inputs that are
//! neither finished nor idle. An input that has shown nothing yet holds it at the start.

use serde::{Deserialize, Serialize};

use crate::model::Millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Input {
    max_ts: Millis,
    finished: bool,
    idle: bool,
}

/// Per-input event-time progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    max_out_of_orderness: Millis,
    inputs: Vec<Input>,
}

impl Watermarks {
    /// `n` inputs, none seen yet.
    pub fn new(n: usize, max_out_of_orderness: Millis) -> Watermarks {
        Watermarks {
            max_out_of_orderness,
            inputs: vec![Input { max_ts: Millis::MIN, finished: false, idle: false }; n],
        }
    }

    /// Changes the bound (a config change); the watermark never moves back.
    pub fn set_max_out_of_orderness(&mut self, bound: Millis) {
        self.max_out_of_orderness = bound;
    }

    /// Input `i` showed an event at `ts`; it is no longer idle.
    pub fn observe(&mut self, i: usize, ts: Millis) {
        let input = &mut self.inputs[i];
        input.max_ts = input.max_ts.max(ts);
        input.idle = false;
    }

    /// Input `i` has ended and no longer holds the watermark back.
    pub fn finish(&mut self, i: usize) {
        self.inputs[i].finished = true;
    }

    /// Marks input `i` idle (excluded from the minimum) or active again.
    pub fn set_idle(&mut self, i: usize, idle: bool) {
        self.inputs[i].idle = idle;
    }

    /// How many inputs there are.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Whether input `i` is currently idle.
    pub fn is_idle(&self, i: usize) -> bool {
        self.inputs[i].idle
    }

    /// The largest event time input `i` has shown (`Millis::MIN`: none yet).
    pub fn max_ts(&self, i: usize) -> Millis {
        self.inputs[i].max_ts
    }

    /// Whether input `i` has ended.
    pub fn is_finished(&self, i: usize) -> bool {
        self.inputs[i].finished
    }

    /// The combined watermark, or `None` when every input is finished or idle (then the
    /// watermark holds where it was).
    pub fn current(&self) -> Option<Millis> {
        self.inputs
            .iter()
            .filter(|i| !i.finished && !i.idle)
            .map(|i| i.max_ts.saturating_sub(self.max_out_of_orderness))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_inputs() {
        let mut w = Watermarks::new(2, 5);
        assert_eq!(w.current(), Some(Millis::MIN));
        w.observe(0, 100);
        assert_eq!(w.current(), Some(Millis::MIN), "input 1 has shown nothing");
        w.observe(1, 50);
        assert_eq!(w.current(), Some(45));
        w.observe(1, 40); // older event: the max stays
        assert_eq!(w.current(), Some(45));
        w.set_idle(1, true);
        assert_eq!(w.current(), Some(95));
        w.observe(1, 60); // activity ends idleness
        assert_eq!(w.current(), Some(55));
        w.finish(1);
        assert_eq!(w.current(), Some(95));
        w.finish(0);
        assert_eq!(w.current(), None);
    }
}
