//! A short soak run: seeded chaos against verified streams (issue: reliability).

use netdma_suite::soak::{run, SoakConfig};
use std::time::Duration;

#[test]
fn short_runs_of_chaos_lose_and_corrupt_nothing() {
    let mut dsa_adds = 0;
    for seed in [1, 2] {
        let report = run(&SoakConfig {
            duration: Duration::from_millis(1500),
            seed,
            // Three receivers (one pipelined), the chaos thread and the DMA workers:
            // more than twice as many busy threads as this machine's two cores.
            receivers: 3,
            ..SoakConfig::default()
        });
        assert_eq!(report.corrupt_bytes, 0, "{report:?}");
        assert_eq!(report.lost_bytes, 0, "{report:?}");
        assert_eq!(report.leaked_references, 0, "{report:?}");
        assert!(report.bytes_verified > 0, "{report:?}");
        assert!(
            report.toggles + report.hot_adds + report.copybreak_changes > 0,
            "no chaos happened: {report:?}"
        );
        dsa_adds += report.dsa_adds;
    }
    // A share of the hot-added devices is the DSA provider on its software portal.
    assert!(dsa_adds > 0, "no emulated DSA device took part");
}
