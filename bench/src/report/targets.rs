//! The targets: figures the project holds itself to, each checked against this run.

use super::Report;
use serde::Serialize;

/// A target, checked against a figure of this run.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The JSON key.
    pub key: &'static str,
    /// The figure.
    pub value: f64,
    /// `>=` or `<=`.
    pub op: &'static str,
    /// The bound.
    pub bound: f64,
    /// When it applies (empty: always).
    pub condition: &'static str,
    /// Whether the condition holds in this run.
    pub applies: bool,
    /// Whether the figure meets the bound.
    pub met: bool,
}

impl Report {
    /// Every target, checked against this run.
    pub fn check_targets(&self) -> Vec<Target> {
        let near = "cross_core_rtt_ns <= 250";
        let rtt_ok = self.rtt.rtt_ns <= 250.0;
        let h = &self.headline;
        let t = |key, value: f64, op, bound: f64, condition, applies| Target {
            key,
            value,
            op,
            bound,
            condition,
            applies,
            met: if op == ">=" {
                value >= bound
            } else {
                value <= bound
            },
        };
        vec![
            t(
                "recv_below_copybreak_ratio",
                h.recv_below_copybreak_ratio,
                ">=",
                0.98,
                "",
                true,
            ),
            t(
                "auto_throughput_ratio",
                h.auto_throughput_ratio,
                ">=",
                0.97,
                "",
                true,
            ),
            t(
                "recv_dma_throughput_ratio",
                h.recv_dma_throughput_ratio,
                ">=",
                1.10,
                near,
                rtt_ok,
            ),
            t(
                "app_cpu_per_mib_ratio",
                h.app_cpu_per_mib_ratio,
                "<=",
                1.15 * h.nocopy_floor_ratio,
                near,
                rtt_ok,
            ),
            t(
                "find_channel_ns",
                self.find_channel_ns,
                "<=",
                10.0,
                "",
                true,
            ),
            t(
                "submit_ns_per_desc",
                self.submit_ns_per_desc,
                "<=",
                30.0,
                "",
                true,
            ),
            t(
                "completion_p50_ns",
                self.completion.p50_ns,
                "<=",
                300.0,
                "worker spinning",
                true,
            ),
        ]
    }
}

/// How a target reads in a table.
pub(super) fn status(t: &Target) -> &'static str {
    match (t.applies, t.met) {
        (true, true) => "met",
        (true, false) => "**missed**",
        (false, true) => "n/a (would be met)",
        (false, false) => "n/a (would be missed)",
    }
}
