//! The adaptive copybreak (`tcp_dma_copybreak = "auto"`) on real traffic: TCP streams
//! over the in-memory link, copied by real devices. The policy measures what the reads
//! cost the receiving thread and routes them to the cheaper path; no cost is made up.

mod common;

use common::*;
use dmaengine::{
    CapMask, Descriptor, Engine, Provider, ProviderError, ProviderSubmitError, SoftwareDevice,
    TxStatus,
};
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::pair::StackPair;
use netdma::pipeline::Pipeline;
use netdma::NetDma;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A software device that reports each copy done only `delay` after it was submitted: a
/// device slower than the CPU (a remote or busy engine), whose copies a synchronous read
/// waits for.
struct Slow {
    inner: Arc<SoftwareDevice>,
    delay: Duration,
    submitted: Mutex<HashMap<(usize, u64), Instant>>,
}

// SAFETY: every answer is the wrapped device's, except that `Complete` may be reported as
// `InProgress` for a while longer: that only delays the moment the caller takes its memory
// back (rules 1 and 4 hold as for the wrapped device); cancellation is forwarded (2, 3, 5).
unsafe impl Provider for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn capabilities(&self) -> CapMask {
        self.inner.capabilities()
    }
    fn operations(&self) -> CapMask {
        self.inner.operations()
    }
    fn channel_count(&self) -> usize {
        self.inner.channel_count()
    }
    fn alloc_chan_resources(&self, chan: usize) -> Result<(), ProviderError> {
        self.inner.alloc_chan_resources(chan)
    }
    fn free_chan_resources(&self, chan: usize) {
        self.inner.free_chan_resources(chan)
    }
    unsafe fn submit(&self, chan: usize, desc: Descriptor) -> Result<u64, ProviderSubmitError> {
        // SAFETY: forwarded verbatim from the caller's contract.
        let seq = unsafe { self.inner.submit(chan, desc) }?;
        self.submitted.lock().insert((chan, seq), Instant::now());
        Ok(seq)
    }
    fn issue_pending(&self, chan: usize) {
        self.inner.issue_pending(chan)
    }
    fn tx_status(&self, chan: usize, seq: u64) -> TxStatus {
        let status = self.inner.tx_status(chan, seq);
        let mut submitted = self.submitted.lock();
        match submitted.get(&(chan, seq)) {
            Some(at) if status == TxStatus::Complete && at.elapsed() < self.delay => {
                TxStatus::InProgress
            }
            Some(_) if status.is_done() => {
                submitted.remove(&(chan, seq));
                status
            }
            _ => status,
        }
    }
    fn terminate_all(&self, chan: usize) {
        self.inner.terminate_all(chan)
    }
    fn error_count(&self, chan: usize) -> u64 {
        self.inner.error_count(chan)
    }
}

/// The tests here measure what copies cost the receiving thread; run side by side on a
/// small machine, each would measure the other's load too. They take turns.
static ALONE: Mutex<()> = Mutex::new(());

fn auto() -> NetDmaConfig {
    NetDmaConfig {
        tcp_dma_copybreak: Copybreak::Auto,
        ..NetDmaConfig::default()
    }
}

#[test]
fn a_device_slower_than_the_cpu_gets_the_reads_routed_to_the_cpu() {
    let _alone = ALONE.lock();
    // Each copy takes at least 2 ms on the device; the CPU copies 64 KiB in microseconds.
    // The policy measures both on the stream's first reads, then sends the reads to the
    // CPU, probing the device now and then.
    let slow = Arc::new(Slow {
        inner: SoftwareDevice::builder().channels(1).build(),
        delay: Duration::from_millis(2),
        submitted: Mutex::new(HashMap::new()),
    });
    let engine = Engine::new();
    engine.register_device(slow).unwrap();
    let netdma = NetDma::new(engine, auto()).unwrap();
    let (mut pair, server, client) = connected(65535);
    let data = pattern(16 * MIB, 50);
    let got = stream_64k(&mut pair, server, client, &netdma, &data);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.total_bytes(), data.len() as u64);
    let reads = s.dma_reads + s.cpu_reads;
    // The device was measured (warm-up and probes) ...
    assert!(s.dma_reads >= 1, "{s:?}");
    // ... and most reads went to the CPU by the policy's choice: at most the warm-up
    // and one in SAMPLE_EVERY (16) reads can have been DMA probes.
    assert!(s.dma_reads <= 1 + reads / 16, "{reads} reads: {s:?}");
    assert!(
        s.fallback.adaptive >= reads - 1 - reads / 16,
        "{reads} reads: {s:?}"
    );
}

#[test]
fn a_device_whose_copies_the_receiving_thread_does_not_pay_for_gets_the_reads() {
    let _alone = ALONE.lock();
    // The pipelined receive: DMA copies run on the device's worker while the receiving
    // thread is elsewhere (here: asleep between polls, as a server waiting on its other
    // connections would be), so a DMA read costs that thread only the submission and the
    // retirement, where a CPU read costs it the copy itself. The policy sees this on the
    // traffic and routes the reads to DMA.
    let engine = Engine::new();
    engine
        .register_device(SoftwareDevice::builder().channels(1).build())
        .unwrap();
    let netdma = Arc::new(NetDma::new(engine, auto()).unwrap());
    let mut pair = StackPair::new(65535);
    let (server_h, client_h) = pair.connect(4 * MIB, 4 * MIB).unwrap();
    let StackPair {
        server, mut client, ..
    } = pair;
    let mut pipeline = Pipeline::new(server, netdma.clone());
    let data = pattern(128 * MIB, 51);
    let post = 256 * 1024;
    let (mut sent, mut claimed) = (0, 0);
    let mut got = Vec::with_capacity(data.len());
    let mut half = None;
    let mut idle = 0u64;
    while got.len() < data.len() {
        let mut progress = false;
        let sock = client.tcp_mut(client_h);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
            progress = true;
        }
        client.poll();
        while pipeline.posted(server_h) < 4 && claimed < data.len() {
            let want = post.min(data.len() - claimed);
            pipeline.post_recv(server_h, vec![0; want], want).unwrap();
            claimed += want;
        }
        progress |= pipeline.poll();
        while let Some(done) = pipeline.take_completed(server_h) {
            assert_eq!(done.error, None);
            got.extend_from_slice(&done.buf[..done.len]);
            progress = true;
        }
        if half.is_none() && got.len() >= data.len() / 2 {
            half = Some(netdma.stats());
        }
        // The receiving thread's other work: the device copies meanwhile.
        std::thread::sleep(Duration::from_micros(50));
        idle = if progress { 0 } else { idle + 1 };
        assert!(idle < 100_000, "stuck at {} of {}", got.len(), data.len());
    }
    assert_same(&got, &data);
    let (h, s) = (half.unwrap(), netdma.stats());
    assert_eq!(s.total_bytes(), data.len() as u64);
    // Over the second half, the policy had settled on DMA: most bytes went there. (Had it
    // settled on the CPU, DMA would carry only its probes, at most one read in
    // SAMPLE_EVERY; the bound leaves room for a noisy machine's extra CPU probes.)
    let (dma, cpu) = (s.dma_bytes - h.dma_bytes, s.cpu_bytes - h.cpu_bytes);
    assert!(
        dma > cpu,
        "second half: {dma} B by DMA, {cpu} B by CPU; {s:?}"
    );
    assert!(s.fallback.adaptive >= 1, "the CPU was measured too: {s:?}");
}
