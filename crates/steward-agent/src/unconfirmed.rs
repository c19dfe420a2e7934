//! What the agent reported on a stream that may have broken unread: run ends and the output
//! before them, kept to be sent again on the next stream.

use std::collections::{HashMap, VecDeque};

use steward_proto::commands::v1::open_stream_request::RunFinished;
use steward_proto::commands::v1::OutputChunk;

use crate::connection::{RECENT_RUNS, REPORT_REPEATS};

/// How much output of finished runs is kept to be sent again with their ends.
const KEPT_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

/// The service stores at most this much of each stream of a run: output past it is not kept to
/// be sent again, whatever `--max-output-bytes` lets the agent send.
const SERVICE_OUTPUT_BOUND: i64 = 1024 * 1024;

/// The ends of runs reported on the current stream, with how often each was repeated, and the
/// output sent with them. Nothing acknowledges a report: written to a stream whose server then
/// dies (killed, or hung and then killed), it is lost with the server's buffers, and the run
/// would stay running on the service until its timeout, its output cut where the server died.
/// So when a stream breaks, the next one repeats the output of the runs in progress, then
/// these reports (at most [`REPORT_REPEATS`] times each, the latest [`RECENT_RUNS`]), each
/// after its run's output (the latest [`KEPT_OUTPUT_BYTES`] of it). The service stores output
/// by offset, so a chunk it already has changes nothing.
#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    reports: VecDeque<Report>,
    /// Output sent of the runs in progress.
    running: HashMap<String, Vec<OutputChunk>>,
}

/// A run's end, the output sent before it, and how often it was repeated.
pub(crate) type Report = (RunFinished, Vec<OutputChunk>, u8);

fn bytes_of(output: &[OutputChunk]) -> usize {
    output.iter().map(|c| c.data.len()).sum()
}

impl Unconfirmed {
    /// `chunk` of a run in progress was written to the current stream.
    pub(crate) fn output(&mut self, chunk: OutputChunk) {
        // `<=`: a piece starting at the bound is the one that tells the service output was cut.
        if chunk.offset <= SERVICE_OUTPUT_BOUND {
            self.running.entry(chunk.run.clone()).or_default().push(chunk);
        }
    }

    /// `finished` was written to the current stream, for the `repeats`-th time, after `output`
    /// (the run's output sent so far, if it is still held as running).
    pub(crate) fn sent(&mut self, finished: RunFinished, output: Vec<OutputChunk>, repeats: u8) {
        let mut output = match self.running.remove(&finished.run) {
            Some(running) if output.is_empty() => running,
            _ => output,
        };
        if let Some(at) = self.reports.iter().position(|(f, _, _)| f.run == finished.run) {
            if let Some((_, earlier, _)) = self.reports.remove(at) {
                if output.is_empty() {
                    output = earlier;
                }
            }
        }
        if self.reports.len() >= RECENT_RUNS {
            self.reports.pop_front();
        }
        self.reports.push_back((finished, output, repeats));
        // Over the bound, the oldest reports go on without their output.
        let mut held: usize = self.reports.iter().map(|(_, output, _)| bytes_of(output)).sum();
        for (_, output, _) in self.reports.iter_mut() {
            if held <= KEPT_OUTPUT_BYTES {
                break;
            }
            held -= bytes_of(output);
            *output = Vec::new();
        }
    }

    /// What to repeat on a new stream after the previous one broke: the output of the runs in
    /// progress (still held), and the reports with their output (the list starts afresh with
    /// what the new stream carries).
    pub(crate) fn take_for_repeat(&mut self) -> (Vec<OutputChunk>, Vec<Report>) {
        let running = self.running.values().flatten().cloned().collect();
        let reports = std::mem::take(&mut self.reports)
            .into_iter()
            .filter(|(_, _, repeats)| *repeats < REPORT_REPEATS)
            .map(|(finished, output, repeats)| (finished, output, repeats + 1))
            .collect();
        (running, reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(run: &str) -> RunFinished {
        RunFinished { run: run.to_owned(), ..Default::default() }
    }

    fn chunk(run: &str, offset: i64, len: usize) -> OutputChunk {
        OutputChunk { run: run.to_owned(), data: vec![b'x'; len], offset, ..Default::default() }
    }

    #[test]
    fn run_ends_are_repeated_after_a_broken_stream_a_bounded_number_of_times() {
        let mut unconfirmed = Unconfirmed::default();
        unconfirmed.sent(finished("a"), Vec::new(), 0);
        unconfirmed.sent(finished("b"), Vec::new(), 0);
        unconfirmed.sent(finished("a"), Vec::new(), 0);
        for round in 1..=REPORT_REPEATS {
            let (_, again) = unconfirmed.take_for_repeat();
            let runs: Vec<&str> = again.iter().map(|(f, _, _)| f.run.as_str()).collect();
            assert_eq!(runs, ["b", "a"], "each run once, latest report last (round {round})");
            for (finished, output, repeats) in again {
                assert_eq!(repeats, round);
                unconfirmed.sent(finished, output, repeats);
            }
        }
        assert!(
            unconfirmed.take_for_repeat().1.is_empty(),
            "repeated {REPORT_REPEATS} times at most"
        );

        for i in 0..RECENT_RUNS + 10 {
            unconfirmed.sent(finished(&i.to_string()), Vec::new(), 0);
        }
        let (_, again) = unconfirmed.take_for_repeat();
        assert_eq!(again.len(), RECENT_RUNS, "bounded");
        assert_eq!(again[0].0.run, "10", "the oldest went first");
    }

    #[test]
    fn output_is_repeated_with_its_run_within_a_bound() {
        let mut unconfirmed = Unconfirmed::default();
        unconfirmed.output(chunk("a", 0, 10));
        unconfirmed.output(chunk("a", 10, 5));
        unconfirmed.output(chunk("b", 0, 7));
        unconfirmed.sent(finished("a"), Vec::new(), 0);
        let (running, reports) = unconfirmed.take_for_repeat();
        assert_eq!(running.len(), 1, "b is still running: its output goes again");
        assert_eq!((running[0].run.as_str(), running[0].data.len()), ("b", 7));
        let (finished_a, output_a, _) = &reports[0];
        assert_eq!(finished_a.run, "a");
        let offsets: Vec<i64> = output_a.iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [0, 10], "a's output, in order, with its end");
        // Past the service's bound, output is not kept.
        unconfirmed.output(chunk("c", SERVICE_OUTPUT_BOUND + 1, 10));
        assert!(unconfirmed.take_for_repeat().0.iter().all(|c| c.run != "c"));
        // Reported again (an assignment repeated), its output stays with it.
        unconfirmed.sent(finished("a"), output_a.clone(), 1);
        unconfirmed.sent(finished("a"), Vec::new(), 1);
        assert_eq!(bytes_of(&unconfirmed.take_for_repeat().1[0].1), 15);

        // Over the bound, the oldest reports lose their output first; their ends stay.
        let mut unconfirmed = Unconfirmed::default();
        let big = KEPT_OUTPUT_BYTES / 3;
        for run in ["1", "2", "3", "4"] {
            unconfirmed.output(chunk(run, 0, big));
            unconfirmed.sent(finished(run), Vec::new(), 0);
        }
        let (_, reports) = unconfirmed.take_for_repeat();
        let kept: Vec<usize> = reports.iter().map(|(_, o, _)| bytes_of(o)).collect();
        assert_eq!(kept, [0, big, big, big]);
    }
}
