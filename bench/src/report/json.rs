//! The JSON document (`--json`): the headline figures as flat keys at the top level, then
//! every table.

use super::{CopyRow, Handoff, Headline, Machine, RecvRow, Report, Target};
use serde::Serialize;

/// The document's shape; the field order is the output's key order.
#[derive(Serialize)]
struct Document<'a> {
    cross_core_rtt_ns: f64,
    cross_core_rtt_end_ns: f64,
    placement_changed: bool,
    recv_below_copybreak_ratio: f64,
    auto_throughput_ratio: f64,
    pipelined_auto_throughput_ratio: f64,
    recv_dma_throughput_ratio: f64,
    nocopy_floor_ratio: f64,
    app_cpu_per_mib_ratio: f64,
    find_channel_ns: f64,
    submit_ns_per_desc: f64,
    submit_ns_per_desc_unbatched: f64,
    completion_p50_ns: f64,
    completion_p99_ns: f64,
    dsa_submit_ns_per_desc: f64,
    dsa_submit_ns_per_desc_unbatched: f64,
    dsa_completion_p50_ns: f64,
    dsa_completion_p99_ns: f64,
    best_dma_mode: &'static str,
    handoff_write_ratio: f64,
    handoff_thread_ratio: f64,
    handoff: &'a Handoff,
    headline: &'a Headline,
    copy_table: &'a [CopyRow],
    recv_table: &'a [RecvRow],
    targets: &'a [Target],
    machine: &'a Machine,
    scale: &'static str,
    elapsed_s: f64,
}

impl Report {
    /// The JSON document: the headline figures as flat keys, then every table.
    pub fn to_json(&self) -> serde_json::Value {
        let h = &self.headline;
        let doc = Document {
            cross_core_rtt_ns: self.rtt.rtt_ns,
            cross_core_rtt_end_ns: self.rtt_end.rtt_ns,
            placement_changed: self.placement_changed(),
            recv_below_copybreak_ratio: h.recv_below_copybreak_ratio,
            auto_throughput_ratio: h.auto_throughput_ratio,
            pipelined_auto_throughput_ratio: h.pipelined_auto_throughput_ratio,
            recv_dma_throughput_ratio: h.recv_dma_throughput_ratio,
            nocopy_floor_ratio: h.nocopy_floor_ratio,
            app_cpu_per_mib_ratio: h.app_cpu_per_mib_ratio,
            find_channel_ns: self.find_channel_ns,
            submit_ns_per_desc: self.submit_ns_per_desc,
            submit_ns_per_desc_unbatched: self.submit_ns_per_desc_unbatched,
            completion_p50_ns: self.completion.p50_ns,
            completion_p99_ns: self.completion.p99_ns,
            dsa_submit_ns_per_desc: self.dsa_submit_ns_per_desc,
            dsa_submit_ns_per_desc_unbatched: self.dsa_submit_ns_per_desc_unbatched,
            dsa_completion_p50_ns: self.dsa_completion.p50_ns,
            dsa_completion_p99_ns: self.dsa_completion.p99_ns,
            best_dma_mode: h.best_dma_mode.name(),
            handoff_write_ratio: self.handoff.write_ratio,
            handoff_thread_ratio: self.handoff.thread_ratio,
            handoff: &self.handoff,
            headline: h,
            copy_table: &self.copy_table,
            recv_table: &self.recv_table,
            targets: &self.targets,
            machine: &self.machine,
            scale: self.scale,
            elapsed_s: self.elapsed_s,
        };
        // Numbers, strings and derived tables only: serializing cannot fail (a NaN
        // becomes null).
        serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
    }
}
