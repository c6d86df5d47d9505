//! One test per engine rule, asserting exact counts and exact errors.
#![cfg(not(loom))]

mod common;

use common::{pattern, MockDevice};
use dmaengine::{
    cpu, scope, scope_with_timeout, Cap, CapMask, Channel, ChannelId, Cookie, CpuSetError,
    DeviceId, DeviceSnapshot, Engine, FaultInjector, FaultPlan, PrivateChannel, RegisterError,
    RequestError, SoftwareDevice, SubmitError, TxStatus, UnregisterError, WaitError,
    DEFAULT_WAIT_TIMEOUT, MAX_CPUS,
};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn memcpy() -> CapMask {
    Cap::Memcpy.into()
}

fn memset() -> CapMask {
    Cap::Memset.into()
}

fn both() -> CapMask {
    CapMask::of(&[Cap::Memcpy, Cap::Memset])
}

#[track_caller]
fn device(engine: &Engine, id: DeviceId) -> DeviceSnapshot {
    engine
        .snapshot()
        .devices
        .into_iter()
        .find(|d| d.id == id)
        .expect("device is registered")
}

#[track_caller]
fn refs(engine: &Engine, id: DeviceId) -> usize {
    device(engine, id).references
}

#[track_caller]
fn channel_ids(engine: &Engine, id: DeviceId) -> Vec<ChannelId> {
    device(engine, id).channels.iter().map(|c| c.id).collect()
}

/// The first `n` CPU slots of the memcpy column.
#[track_caller]
fn memcpy_column(engine: &Engine, n: usize) -> Vec<Option<ChannelId>> {
    engine.snapshot().table.memcpy[..n].to_vec()
}

#[track_caller]
fn memset_column(engine: &Engine, n: usize) -> Vec<Option<ChannelId>> {
    engine.snapshot().table.memset[..n].to_vec()
}

#[track_caller]
fn resources(engine: &Engine, id: DeviceId) -> Vec<bool> {
    device(engine, id)
        .channels
        .iter()
        .map(|c| c.resources)
        .collect()
}

/// A private channel of the only device that offers `caps`; panics if none.
#[track_caller]
fn private(engine: &Engine, caps: CapMask) -> PrivateChannel {
    engine
        .request_channel(caps, |_| true)
        .expect("a free channel")
}

/// Polls `done` up to ~10 s (bounded, never a timing assertion on success).
#[track_caller]
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("never happened: {what}");
}

/// Copies `src` into `dst` on `chan` through a scope and returns the outcome.
fn scoped_copy(chan: &Channel, dst: &mut [u8], src: &[u8]) -> Result<(), String> {
    scope(|s| {
        let t = s.memcpy(chan, dst, src).map_err(|e| e.to_string())?;
        t.wait().map_err(|e| e.to_string())
    })
}

fn sw(name: &str, channels: usize) -> Arc<SoftwareDevice> {
    SoftwareDevice::builder()
        .name(name)
        .channels(channels)
        .build()
}

// ---------------------------------------------------------------------------------------
// Register validation
// ---------------------------------------------------------------------------------------

#[test]
fn register_rejects_advertised_capability_without_operation() {
    let engine = Engine::new();
    let dev = MockDevice::with_ops("half", both(), memcpy(), 2);
    assert_eq!(
        engine.register_device(dev),
        Err(RegisterError::MissingOperation {
            name: "half".into(),
            cap: Cap::Memset
        })
    );
    assert!(engine.snapshot().devices.is_empty());
}

#[test]
fn register_rejects_device_without_channels() {
    let engine = Engine::new();
    assert_eq!(
        engine.register_device(MockDevice::new("empty", memcpy(), 0)),
        Err(RegisterError::NoChannels {
            name: "empty".into()
        })
    );
}

#[test]
fn register_rejects_device_without_operations() {
    let engine = Engine::new();
    assert_eq!(
        engine.register_device(MockDevice::new("none", CapMask::EMPTY, 2)),
        Err(RegisterError::NoOperations {
            name: "none".into()
        })
    );
    // DMA_PRIVATE alone is a property, not an operation.
    assert_eq!(
        engine.register_device(MockDevice::new("private", Cap::Private.into(), 2)),
        Err(RegisterError::NoOperations {
            name: "private".into()
        })
    );
    assert!(engine.snapshot().devices.is_empty());
}

#[test]
fn register_accepts_extra_operations_and_assigns_fresh_ids() {
    let engine = Engine::new();
    let a = engine
        .register_device(MockDevice::with_ops("a", memcpy(), both(), 1))
        .unwrap();
    let b = engine
        .register_device(MockDevice::new("b", memcpy(), 1))
        .unwrap();
    assert_ne!(a, b);
    engine.unregister_device(a).unwrap();
    let c = engine
        .register_device(MockDevice::new("c", memcpy(), 1))
        .unwrap();
    assert!(c != a && c != b, "ids are never reused");
}

// ---------------------------------------------------------------------------------------
// Clients and references
// ---------------------------------------------------------------------------------------

#[test]
fn no_clients_means_no_per_channel_work() {
    let engine = Engine::new();
    engine
        .register_device(MockDevice::new("a", memcpy(), 4))
        .unwrap();
    engine
        .register_device(MockDevice::new("b", both(), 8))
        .unwrap();
    let stats = engine.stats();
    assert_eq!(stats.mask_tests, 0);
    assert_eq!(stats.channel_ref_updates, 0);
    assert_eq!(stats.channel_resource_checks, 0);
    assert_eq!(engine.total_references(), 0);

    // A client makes the devices' 12 channels worth a look; once it is gone and their
    // resources are freed, registering another device again touches no channel.
    drop(engine.client(memcpy()));
    let after_client = engine.stats().channel_resource_checks;
    assert!(after_client > 0);
    engine
        .register_device(MockDevice::new("c", both(), 16))
        .unwrap();
    assert_eq!(engine.stats().channel_resource_checks, after_client);
}

#[test]
fn client_pins_only_devices_serving_its_capabilities() {
    let engine = Engine::new();
    let a_dev = MockDevice::new("a", memcpy(), 4);
    let b_dev = MockDevice::new("b", memset(), 4);
    let a = engine.register_device(a_dev.clone()).unwrap();
    let b = engine.register_device(b_dev.clone()).unwrap();

    let before = engine.stats();
    let client = engine.client(memcpy());
    let after = engine.stats();
    assert_eq!(after.mask_tests - before.mask_tests, 2, "once per device");
    assert_eq!(after.channel_ref_updates - before.channel_ref_updates, 4);
    assert_eq!(after.rebalances - before.rebalances, 1);
    assert_eq!(refs(&engine, a), 4);
    assert_eq!(refs(&engine, b), 0);
    assert_eq!(device(&engine, a).clients, 1);
    assert_eq!(device(&engine, b).clients, 0);
    assert_eq!(b_dev.allocated_channels(), 0);

    engine.unregister_device(b).unwrap();
    assert_eq!(
        engine.unregister_device(a),
        Err(UnregisterError::Busy {
            device: a,
            clients: 1,
            private_channels: 0,
            references: 4
        })
    );
    let text = engine.unregister_device(a).unwrap_err().to_string();
    assert!(text.contains("pinned by 1 client(s)"), "{text}");

    drop(client);
    assert_eq!(refs(&engine, a), 0);
    assert_eq!(a_dev.allocated_channels(), 0);
    engine.unregister_device(a).unwrap();
    assert_eq!(engine.total_references(), 0);
}

#[test]
fn every_client_adds_one_reference_per_channel() {
    let engine = Engine::new();
    let a = engine
        .register_device(MockDevice::new("a", both(), 3))
        .unwrap();
    let c1 = engine.client(memcpy());
    let c2 = engine.client(memset());
    let c3 = engine.client(both());
    assert_eq!(refs(&engine, a), 9);
    assert_eq!(
        engine.unregister_device(a),
        Err(UnregisterError::Busy {
            device: a,
            clients: 3,
            private_channels: 0,
            references: 9
        })
    );
    drop(c2);
    assert_eq!(refs(&engine, a), 6);
    assert_eq!(engine.snapshot().clients, 2);
    drop((c1, c3));
    assert_eq!(refs(&engine, a), 0);
    engine.unregister_device(a).unwrap();
}

#[test]
fn mask_is_tested_once_per_device_per_update() {
    let engine = Engine::new();
    engine
        .register_device(MockDevice::new("a", memcpy(), 4))
        .unwrap();
    engine
        .register_device(MockDevice::new("b", memset(), 4))
        .unwrap();
    let _c1 = engine.client(memcpy());
    let s1 = engine.stats();
    let _c2 = engine.client(memcpy());
    let s2 = engine.stats();
    assert_eq!(s2.mask_tests - s1.mask_tests, 2);
    // Only a's 4 channels change (1 -> 2); b's stay at 0 and are not touched.
    assert_eq!(s2.channel_ref_updates - s1.channel_ref_updates, 4);
    // A change of the online set does not change references: masks tested, no writes.
    engine.set_online_cpus(&[0]).unwrap();
    let s3 = engine.stats();
    assert_eq!(s3.mask_tests - s2.mask_tests, 2);
    assert_eq!(s3.channel_ref_updates, s2.channel_ref_updates);
}

#[test]
fn registering_while_clients_exist_takes_their_references() {
    let engine = Engine::new();
    let client = engine.client(memcpy());
    let _other = engine.client(memset());
    let dev = MockDevice::new("late", memcpy(), 4);
    let before = engine.stats();
    let id = engine.register_device(dev.clone()).unwrap();
    let after = engine.stats();
    assert_eq!(after.mask_tests - before.mask_tests, 1);
    assert_eq!(after.channel_ref_updates - before.channel_ref_updates, 4);
    assert_eq!(refs(&engine, id), 4);
    assert_eq!(device(&engine, id).clients, 1);
    assert!(client.find_channel(Cap::Memcpy).is_some());
    assert!(
        engine.unregister_device(id).is_err(),
        "pinned on the client's behalf"
    );
    drop(client);
    engine.unregister_device(id).unwrap();
}

#[test]
fn find_channel_is_none_without_a_client_for_the_capability() {
    let engine = Engine::new();
    engine
        .register_device(MockDevice::new("a", both(), 2))
        .unwrap();
    assert!(engine.find_channel(Cap::Memcpy).is_none());
    let client = engine.client(memcpy());
    assert!(client.find_channel(Cap::Memcpy).is_some());
    assert!(client.find_channel(Cap::Memset).is_none(), "nobody asked");
    assert!(client.find_channel(Cap::Private).is_none());
    assert_eq!(client.capabilities(), memcpy());
}

// ---------------------------------------------------------------------------------------
// The per-CPU table
// ---------------------------------------------------------------------------------------

#[test]
fn table_distributes_like_nth_chan() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1, 2, 3]).unwrap();
    let id = engine
        .register_device(MockDevice::new("a", memcpy(), 2))
        .unwrap();
    let _client = engine.client(memcpy());
    let ch = channel_ids(&engine, id);
    assert_eq!(
        memcpy_column(&engine, 4),
        vec![Some(ch[0]), Some(ch[1]), Some(ch[0]), Some(ch[1])]
    );
    let counts: Vec<usize> = device(&engine, id)
        .channels
        .iter()
        .map(|c| c.table_count)
        .collect();
    assert_eq!(counts, vec![2, 2]);
}

#[test]
fn table_continues_nth_chan_across_capabilities() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1]).unwrap();
    let id = engine
        .register_device(MockDevice::new("a", both(), 4))
        .unwrap();
    let _client = engine.client(both());
    let ch = channel_ids(&engine, id);
    assert_eq!(memcpy_column(&engine, 2), vec![Some(ch[0]), Some(ch[1])]);
    assert_eq!(memset_column(&engine, 2), vec![Some(ch[2]), Some(ch[3])]);
}

#[test]
fn table_spans_devices_in_registration_order() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1, 2]).unwrap();
    let a = engine
        .register_device(MockDevice::new("a", memcpy(), 1))
        .unwrap();
    let b = engine
        .register_device(MockDevice::new("b", memcpy(), 1))
        .unwrap();
    let _client = engine.client(memcpy());
    let (ca, cb) = (channel_ids(&engine, a)[0], channel_ids(&engine, b)[0]);
    // CPU 2: no third channel, so the lowest table count, first in order on a tie.
    assert_eq!(
        memcpy_column(&engine, 3),
        vec![Some(ca), Some(cb), Some(ca)]
    );
}

#[test]
fn resources_only_for_channels_in_the_table() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1]).unwrap();
    let dev = MockDevice::new("a", both(), 4);
    let id = engine.register_device(dev.clone()).unwrap();
    assert_eq!(dev.allocated_channels(), 0, "no client: nothing allocated");
    let client = engine.client(memcpy());
    assert_eq!(dev.allocated_channels(), 2);
    assert_eq!(resources(&engine, id), vec![true, true, false, false]);
    let memset_client = engine.client(memset());
    assert_eq!(dev.allocated_channels(), 4);
    drop(memset_client);
    assert_eq!(dev.allocated_channels(), 2);
    drop(client);
    assert_eq!(dev.allocated_channels(), 0);
    assert_eq!(resources(&engine, id), vec![false; 4]);
}

#[test]
fn software_workers_run_only_for_channels_in_the_table() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1]).unwrap();
    let dev = sw("lazy", 4);
    engine.register_device(dev.clone()).unwrap();
    assert_eq!(dev.running_workers(), 0);
    let client = engine.client(memcpy());
    assert_eq!(dev.running_workers(), 2);
    drop(client);
    assert_eq!(dev.running_workers(), 0);
}

#[test]
fn online_cpu_change_rebalances_and_frees_unused_channels() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1, 2, 3]).unwrap();
    let dev = MockDevice::new("a", memcpy(), 4);
    let id = engine.register_device(dev.clone()).unwrap();
    let _client = engine.client(memcpy());
    let ch = channel_ids(&engine, id);
    assert_eq!(dev.allocated_channels(), 4);
    assert_eq!(
        memcpy_column(&engine, 4),
        ch.iter().copied().map(Some).collect::<Vec<_>>()
    );

    let rebalances = engine.stats().rebalances;
    engine.set_online_cpus(&[0]).unwrap();
    assert_eq!(engine.stats().rebalances, rebalances + 1);
    assert_eq!(engine.online_cpus(), vec![0]);
    assert_eq!(dev.allocated_channels(), 1);
    assert_eq!(resources(&engine, id), vec![true, false, false, false]);
    // Offline CPUs borrow the online CPU's channel without adding to its table count.
    assert_eq!(memcpy_column(&engine, 4), vec![Some(ch[0]); 4]);
    assert_eq!(device(&engine, id).channels[0].table_count, 1);

    engine.set_online_cpus(&[3, 1, 1]).unwrap();
    assert_eq!(engine.online_cpus(), vec![1, 3], "sorted and deduplicated");
    assert_eq!(dev.allocated_channels(), 2);
    let col = memcpy_column(&engine, 4);
    assert_eq!((col[1], col[3]), (Some(ch[0]), Some(ch[1])));
    for cpu in [0, 2] {
        assert!(
            col[cpu] == col[1] || col[cpu] == col[3],
            "offline CPU {cpu} borrows an online CPU's channel: {col:?}"
        );
    }
    // Every slot of the table is filled, whatever its size.
    assert!(engine.snapshot().table.memcpy.iter().all(Option::is_some));
}

#[test]
fn find_channel_returns_this_cpus_entry() {
    let engine = Engine::new();
    let cpus = cpu::process_affinity();
    engine.set_online_cpus(&cpus).unwrap();
    engine
        .register_device(MockDevice::new("a", memcpy(), 8))
        .unwrap();
    let client = engine.client(memcpy());
    let table = engine.snapshot().table;
    for &cpu in &cpus {
        // Pinned in a thread of its own so the test harness's threads keep their mask.
        let found = std::thread::scope(|s| {
            s.spawn(|| {
                cpu::pin_current_thread(cpu).unwrap();
                assert_eq!(cpu::current_cpu(), cpu);
                client.find_channel(Cap::Memcpy).map(|c| c.id())
            })
            .join()
            .unwrap()
        });
        assert_eq!(found, table.memcpy[cpu], "CPU {cpu}");
        assert!(found.is_some());
    }
}

#[test]
fn online_cpu_set_is_validated() {
    let engine = Engine::new();
    let online = engine.online_cpus();
    assert_eq!(engine.set_online_cpus(&[]), Err(CpuSetError::Empty));
    assert_eq!(
        engine.set_online_cpus(&[0, MAX_CPUS]),
        Err(CpuSetError::OutOfRange {
            cpu: MAX_CPUS,
            max: MAX_CPUS - 1
        })
    );
    assert_eq!(engine.online_cpus(), online, "unchanged after a refusal");
    assert_eq!(engine.set_online_cpus(&[MAX_CPUS - 1]), Ok(()));
}

// ---------------------------------------------------------------------------------------
// Private channels
// ---------------------------------------------------------------------------------------

#[test]
fn request_fails_while_a_public_client_uses_the_device() {
    let engine = Engine::new();
    engine
        .register_device(MockDevice::new("a", memcpy(), 2))
        .unwrap();
    let client = engine.client(memcpy());
    assert_eq!(
        engine.request_channel(memcpy(), |_| true).unwrap_err(),
        RequestError::NoChannel(memcpy())
    );
    drop(client);
    assert!(engine.request_channel(memcpy(), |_| true).is_ok());
}

#[test]
fn private_channel_takes_its_device_out_of_the_table() {
    let engine = Engine::new();
    let dev = MockDevice::new("a", memcpy(), 2);
    let id = engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    assert_eq!(chan.device(), id);
    assert_eq!(chan.counters().in_use, 1);
    assert_eq!(dev.allocated_channels(), 1, "only the private channel");
    let snap = device(&engine, id);
    assert!(snap.private);
    assert_eq!(snap.private_channels, 1);
    assert_eq!(
        snap.channels
            .iter()
            .map(|c| c.counters.in_use)
            .collect::<Vec<_>>(),
        vec![1, 0]
    );

    // A client made now finds nothing: the only device is private.
    let client = engine.client(memcpy());
    assert!(client.find_channel(Cap::Memcpy).is_none());
    assert_eq!(refs(&engine, id), 1, "only the private user");
    assert_eq!(
        engine.unregister_device(id),
        Err(UnregisterError::Busy {
            device: id,
            clients: 0,
            private_channels: 1,
            references: 1
        })
    );

    // Released: back in the public pool, and the waiting client takes its references.
    drop(chan);
    assert!(!device(&engine, id).private);
    assert_eq!(refs(&engine, id), 2);
    assert_eq!(client.find_channel(Cap::Memcpy).unwrap().device(), id);
    drop(client);
    assert_eq!(dev.allocated_channels(), 0);
    engine.unregister_device(id).unwrap();
}

#[test]
fn private_channels_are_exclusive() {
    let engine = Engine::new();
    let id = engine
        .register_device(MockDevice::new("a", memcpy(), 2))
        .unwrap();
    let c0 = private(&engine, memcpy());
    let c1 = private(&engine, memcpy());
    assert_ne!(c0.id(), c1.id());
    assert_eq!((c0.index(), c1.index()), (0, 1));
    assert_eq!(
        engine.request_channel(memcpy(), |_| true).unwrap_err(),
        RequestError::NoChannel(memcpy())
    );
    assert_eq!(device(&engine, id).private_channels, 2);
    c0.release();
    assert_eq!(device(&engine, id).private_channels, 1);
    assert!(device(&engine, id).private, "still one out");
    let again = private(&engine, memcpy());
    assert_eq!(again.index(), 0);
}

#[test]
fn private_capability_device_never_appears_in_the_table() {
    let engine = Engine::new();
    let dev = MockDevice::new("p", CapMask::of(&[Cap::Memcpy, Cap::Private]), 2);
    let id = engine.register_device(dev.clone()).unwrap();
    let client = engine.client(memcpy());
    assert!(client.find_channel(Cap::Memcpy).is_none());
    assert!(engine.snapshot().table.memcpy.iter().all(Option::is_none));
    assert_eq!(refs(&engine, id), 0);
    assert_eq!(dev.allocated_channels(), 0);
    assert_eq!(
        engine.stats().mask_tests,
        0,
        "a private device is not tested"
    );
    // But it hands out private channels, even while public clients exist.
    let chan = private(&engine, memcpy());
    assert_eq!(chan.device(), id);
    assert!(client.find_channel(Cap::Memcpy).is_none());
    drop(chan);
    assert!(device(&engine, id).private);
    drop(client);
    engine.unregister_device(id).unwrap();
}

#[test]
fn request_honours_mask_and_filter() {
    let engine = Engine::new();
    let a = engine
        .register_device(MockDevice::new("a", memcpy(), 3))
        .unwrap();
    let b = engine
        .register_device(MockDevice::new("b", both(), 2))
        .unwrap();
    let seen = Cell::new(0);
    let chan = engine
        .request_channel(memcpy(), |c| {
            seen.set(seen.get() + 1);
            c.device() == a && c.index() == 2
        })
        .unwrap();
    assert_eq!((chan.device(), chan.index()), (a, 2));
    assert_eq!(seen.get(), 3, "offered a's channels in order");
    let set = engine.request_channel(memset(), |_| true).unwrap();
    assert_eq!(set.device(), b, "only b can memset");
    assert_eq!(
        engine.request_channel(memcpy(), |_| false).unwrap_err(),
        RequestError::NoChannel(memcpy())
    );
}

// ---------------------------------------------------------------------------------------
// Forced removal
// ---------------------------------------------------------------------------------------

#[test]
fn forced_removal_fails_in_flight_work_and_keeps_clients_working() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1]).unwrap();
    let a_dev = FaultInjector::new(sw("rm-a", 2), FaultPlan::default());
    let b_dev = sw("rm-b", 2);
    let a = engine.register_device(a_dev.clone()).unwrap();
    let b = engine.register_device(b_dev.clone()).unwrap();
    let client = engine.client(memcpy());
    // Two CPUs, nth_chan: a's two channels fill the table; b is referenced but idle.
    assert_eq!(b_dev.running_workers(), 0);
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    assert_eq!(chan.device(), a);
    a_dev.stall(0);
    a_dev.stall(1);

    let src = pattern(4096, 1);
    let inflight: Vec<_> = (0..3)
        .map(|_| chan.memcpy_owned(vec![0u8; 4096], src.clone()).unwrap())
        .collect();
    chan.issue_pending();
    assert!(inflight.iter().all(|t| t.status() == TxStatus::InProgress));

    // A waiter blocked on a stalled transfer is released by the removal too.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let waiter = {
        let chan = chan.clone();
        std::thread::spawn(move || {
            let src = pattern(512, 2);
            let mut dst = vec![0u8; 512];
            let outcome = scope(|s| {
                let t = s.memcpy(&chan, &mut dst, &src).unwrap();
                ready_tx.send(t.cookie()).unwrap();
                t.wait()
            });
            (outcome, dst)
        })
    };
    let waited_cookie = ready_rx.recv().unwrap();

    assert_eq!(engine.remove_device(a), Ok(2));
    for t in inflight {
        assert_eq!(t.status(), TxStatus::Error);
        let cookie = t.cookie();
        let (result, dst, _src) = t.wait(DEFAULT_WAIT_TIMEOUT);
        assert_eq!(result, Err(WaitError::Failed(cookie)));
        assert!(dst.iter().all(|&b| b == 0), "cancelled before it started");
    }
    let (outcome, dst) = waiter.join().unwrap();
    assert_eq!(outcome, Err(WaitError::Failed(waited_cookie)));
    assert!(dst.iter().all(|&b| b == 0));

    // The old handle refuses new work ...
    let rejected = chan.memcpy_owned(vec![0u8; 8], vec![1u8; 8]).unwrap_err();
    assert_eq!(rejected.error, SubmitError::ChannelGone(chan.id()));
    assert_eq!(rejected.src, vec![1u8; 8]);
    // ... and the table now points at b, which works.
    let chan_b = client.find_channel(Cap::Memcpy).unwrap();
    assert_eq!(chan_b.device(), b);
    assert_eq!(b_dev.running_workers(), 2);
    let mut dst = vec![0u8; 4096];
    scoped_copy(&chan_b, &mut dst, &src).unwrap();
    assert_eq!(dst, src);
    assert_eq!(a_dev.inner().running_workers(), 0, "a's workers are gone");

    assert_eq!(
        engine.unregister_device(a),
        Err(UnregisterError::UnknownDevice(a))
    );
    assert_eq!(
        engine.remove_device(a),
        Err(UnregisterError::UnknownDevice(a))
    );
    drop(client);
    engine.unregister_device(b).unwrap();
    assert_eq!(
        engine.unregister_device(b),
        Err(UnregisterError::UnknownDevice(b))
    );
}

#[test]
fn forced_removal_of_a_device_with_a_private_channel_out() {
    let engine = Engine::new();
    let dev = MockDevice::new("a", memcpy(), 2);
    let id = engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    assert_eq!(engine.remove_device(id), Ok(1));
    assert_eq!(dev.allocated_channels(), 0);
    let mut dst = [0u8; 4];
    assert_eq!(
        scope(|s| s.memcpy(&chan, &mut dst, &[1, 2, 3, 4]).map(|_| ())),
        Err(SubmitError::ChannelGone(chan.id()))
    );
    drop(chan); // releasing after removal is harmless
    assert_eq!(engine.total_references(), 0);
}

#[test]
fn removing_an_idle_device_returns_zero_references() {
    let engine = Engine::new();
    let id = engine
        .register_device(MockDevice::new("a", memcpy(), 2))
        .unwrap();
    assert_eq!(engine.remove_device(id), Ok(0));
    assert_eq!(
        engine.unregister_device(id),
        Err(UnregisterError::UnknownDevice(id))
    );
}

// ---------------------------------------------------------------------------------------
// Transfers: cookies, doorbell, ring, wait
// ---------------------------------------------------------------------------------------

#[test]
fn cookies_count_from_one_per_channel() {
    let engine = Engine::new();
    engine.register_device(sw("cookies", 2)).unwrap();
    let c0 = private(&engine, memcpy());
    let c1 = private(&engine, memcpy());
    let src = pattern(64, 3);
    let mut dst = vec![0u8; 64 * 4];
    let (seqs0, seqs1) = scope(|s| {
        let mut parts = dst.chunks_mut(64);
        let mut seqs0 = Vec::new();
        for _ in 0..3 {
            let t = s.memcpy(&c0, parts.next().unwrap(), &src).unwrap();
            assert_eq!(t.cookie().channel(), c0.id());
            seqs0.push(t.cookie().seq());
        }
        let t = s.memcpy(&c1, parts.next().unwrap(), &src).unwrap();
        (seqs0, vec![t.cookie().seq()])
    });
    assert_eq!(seqs0, vec![1, 2, 3]);
    assert_eq!(seqs1, vec![1]);
    assert!(dst.chunks(64).all(|c| c == &src[..]));
}

#[test]
fn nothing_starts_before_issue_pending() {
    let engine = Engine::new();
    engine.register_device(sw("doorbell", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(4096, 4);
    let mut dst = vec![0u8; 4096];
    scope(|s| {
        let t = s.memcpy(&chan, &mut dst, &src).unwrap();
        // The worker has nothing to run until the doorbell, however long we look.
        for _ in 0..20 {
            assert_eq!(t.status(), TxStatus::InProgress);
            std::thread::sleep(Duration::from_millis(1));
        }
        chan.issue_pending();
        eventually("the issued copy completes", || {
            t.status() == TxStatus::Complete
        });
    });
    assert_eq!(dst, src);
}

#[test]
fn full_ring_is_a_typed_error_and_clears_after_waiting() {
    let engine = Engine::new();
    engine
        .register_device(
            SoftwareDevice::builder()
                .name("ring")
                .channels(1)
                .ring_size(4)
                .build(),
        )
        .unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(16, 5);
    let mut dst = [0u8; 16 * 6];
    scope(|s| {
        let mut parts = dst.chunks_mut(16);
        let mut last = None;
        for _ in 0..4 {
            last = Some(s.memcpy(&chan, parts.next().unwrap(), &src).unwrap());
        }
        assert_eq!(
            s.memcpy(&chan, parts.next().unwrap(), &src).unwrap_err(),
            SubmitError::RingFull { capacity: 4 }
        );
        last.unwrap().wait().unwrap();
        s.memcpy(&chan, parts.next().unwrap(), &src)
            .unwrap()
            .wait()
            .unwrap();
    });
    let done: Vec<bool> = dst.chunks(16).map(|c| c == &src[..]).collect();
    assert_eq!(done, vec![true, true, true, true, false, true]);
    assert_eq!(
        chan.counters().memcpy_count,
        5,
        "the refused one is not counted"
    );
}

#[test]
fn wait_times_out_on_a_stalled_channel() {
    let engine = Engine::new();
    let dev = FaultInjector::new(sw("stall", 1), FaultPlan::default());
    engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    dev.stall(0);
    let t = chan.memcpy_owned(vec![0u8; 64], pattern(64, 6)).unwrap();
    let cookie = t.cookie();
    let timeout = Duration::from_millis(20);
    assert_eq!(
        chan.wait(cookie, timeout),
        Err(WaitError::Timeout { cookie, timeout })
    );
    assert_eq!(t.status(), TxStatus::InProgress);
    dev.unstall(0);
    let (result, dst, src) = t.wait(DEFAULT_WAIT_TIMEOUT);
    assert_eq!(result, Ok(()));
    assert_eq!(dst, src);
}

#[test]
fn a_cookie_of_another_channel_is_refused() {
    let engine = Engine::new();
    engine.register_device(sw("wrong", 2)).unwrap();
    let c0 = private(&engine, memcpy());
    let c1 = private(&engine, memcpy());
    let (result, dst, src) = c0
        .memcpy_owned(vec![0u8; 8], vec![9u8; 8])
        .unwrap()
        .wait(DEFAULT_WAIT_TIMEOUT);
    assert_eq!((result, dst), (Ok(()), src));
    let cookie = last_cookie(&c0);
    let wrong = WaitError::WrongChannel {
        cookie,
        channel: c1.id(),
    };
    assert_eq!(c1.wait(cookie, DEFAULT_WAIT_TIMEOUT), Err(wrong.clone()));
    assert_eq!(c1.status(cookie), Err(wrong));
    assert_eq!(c0.status(cookie), Ok(TxStatus::Complete));
}

/// The cookie of a fresh zero-length copy on `chan`, waited for.
fn last_cookie(chan: &Channel) -> Cookie {
    let t = chan.memcpy_owned(Vec::new(), Vec::new()).unwrap();
    let cookie = t.cookie();
    t.wait(DEFAULT_WAIT_TIMEOUT).0.unwrap();
    cookie
}

#[test]
fn issue_pending_all_rings_every_doorbell() {
    let engine = Engine::new();
    engine.register_device(sw("all", 2)).unwrap();
    let c0 = private(&engine, memcpy());
    let c1 = private(&engine, memcpy());
    let t0 = c0.memcpy_owned(vec![0u8; 1000], pattern(1000, 7)).unwrap();
    let t1 = c1.memcpy_owned(vec![0u8; 1000], pattern(1000, 8)).unwrap();
    assert_eq!(t0.status(), TxStatus::InProgress);
    assert_eq!(t1.status(), TxStatus::InProgress);
    engine.issue_pending_all();
    // Only polling from here: `wait` would ring the doorbell itself.
    eventually("both complete", || {
        t0.status() == TxStatus::Complete && t1.status() == TxStatus::Complete
    });
    for t in [t0, t1] {
        let (result, dst, src) = t.wait(DEFAULT_WAIT_TIMEOUT);
        assert_eq!((result, dst), (Ok(()), src));
    }
}

#[test]
fn submissions_are_checked_against_the_channels_capabilities() {
    let engine = Engine::new();
    engine
        .register_device(SoftwareDevice::builder().memset(false).channels(1).build())
        .unwrap();
    let chan = private(&engine, memcpy());
    let mut dst = [0u8; 4];
    assert_eq!(
        scope(|s| s.memset(&chan, &mut dst, 7).map(|_| ())),
        Err(SubmitError::Unsupported(Cap::Memset))
    );
    assert_eq!(
        scope(|s| s.memcpy(&chan, &mut dst, &[1, 2, 3]).map(|_| ())),
        Err(SubmitError::LengthMismatch { src: 3, dst: 4 })
    );
}

#[test]
fn a_channel_without_resources_refuses_work() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0]).unwrap();
    engine.register_device(sw("nores", 1)).unwrap();
    let client = engine.client(memcpy());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    drop(client); // the last client: resources freed, but the handle lives on
    let rejected = chan.memcpy_owned(vec![0u8; 4], vec![1u8; 4]).unwrap_err();
    assert_eq!(rejected.error, SubmitError::NoResources(chan.id()));
}

// ---------------------------------------------------------------------------------------
// Safe API: scope and owned buffers
// ---------------------------------------------------------------------------------------

#[test]
fn scope_copies_are_exact() {
    let engine = Engine::new();
    engine.register_device(sw("scope", 2)).unwrap();
    let client = engine.client(memcpy());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let sizes = [1usize, 100, 4096, 100_000];
    let srcs: Vec<Vec<u8>> = sizes.iter().map(|&n| pattern(n, n as u64)).collect();
    let mut dsts: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
    scope(|s| {
        let transfers: Vec<_> = dsts
            .iter_mut()
            .zip(&srcs)
            .map(|(d, src)| s.memcpy(&chan, d, src).unwrap())
            .collect();
        chan.issue_pending();
        for t in &transfers {
            t.wait().unwrap();
        }
    });
    assert_eq!(dsts, srcs);
}

#[test]
fn scope_without_waiting_still_finishes_every_transfer() {
    let engine = Engine::new();
    engine.register_device(sw("nowait", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(65536, 9);
    let mut dst = vec![0u8; 65536];
    let cookie = scope(|s| s.memcpy(&chan, &mut dst, &src).unwrap().cookie());
    assert_eq!(chan.status(cookie), Ok(TxStatus::Complete));
    assert_eq!(dst, src);
}

#[test]
fn a_panic_inside_the_scope_still_waits_for_its_transfers() {
    let engine = Engine::new();
    engine.register_device(sw("panic", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(1 << 20, 10);
    let mut dst = vec![0u8; 1 << 20];
    let cookie = Cell::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scope(|s| {
            let t = s.memcpy(&chan, &mut dst, &src).unwrap();
            cookie.set(Some(t.cookie()));
            panic!("boom inside the scope");
        })
    }));
    assert!(outcome.is_err());
    let cookie = cookie.get().unwrap();
    assert_eq!(chan.status(cookie), Ok(TxStatus::Complete));
    assert!(dst == src, "the copy finished before the borrow ended");
    assert_eq!(chan.counters().errors, 0);
}

#[test]
fn scope_timeout_cancels_stalled_transfers() {
    let engine = Engine::new();
    let dev = FaultInjector::new(sw("cancel", 1), FaultPlan::default());
    engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    dev.stall(0);
    let src = pattern(4096, 11);
    let mut dst = vec![0u8; 4096];
    let cookie = scope_with_timeout(Duration::from_millis(20), |s| {
        s.memcpy(&chan, &mut dst, &src).unwrap().cookie()
    });
    assert!(dst.iter().all(|&b| b == 0), "cancelled before it started");
    assert_eq!(chan.status(cookie), Ok(TxStatus::Error));
    assert_eq!(chan.counters().errors, 1);
    assert_eq!(
        dev.faults_injected(),
        0,
        "a cancellation, not an injected fault"
    );
}

#[test]
fn terminate_all_never_runs_what_was_not_issued_and_lets_issued_work_finish() {
    let engine = Engine::new();
    engine.register_device(sw("terminate", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(64 * 1024, 13);
    let mut issued = vec![vec![0u8; src.len()]; 4];
    let mut held = vec![vec![0u8; src.len()]; 16];
    let mut cookies = (Vec::new(), Vec::new());
    // SAFETY: every buffer outlives the copies: they are all done when `terminate_all`
    // returns (checked below), before any buffer is read or dropped.
    unsafe {
        for d in &mut issued {
            cookies.0.push(
                chan.memcpy_raw(d.as_mut_ptr(), src.as_ptr(), src.len())
                    .unwrap(),
            );
        }
        chan.issue_pending();
        for d in &mut held {
            cookies.1.push(
                chan.memcpy_raw(d.as_mut_ptr(), src.as_ptr(), src.len())
                    .unwrap(),
            );
        }
    }
    chan.terminate_all();
    // Everything submitted before the call is done now.
    for &c in cookies.0.iter().chain(&cookies.1) {
        assert!(chan.status(c).unwrap().is_done(), "{c} still in flight");
    }
    // Never issued, so never started: cancelled, destinations untouched.
    for (&c, d) in cookies.1.iter().zip(&held) {
        assert_eq!(chan.status(c), Ok(TxStatus::Error));
        assert!(d.iter().all(|&b| b == 0), "{c} was run after terminate_all");
    }
    // Issued ones either finished whole or were skipped whole.
    for (&c, d) in cookies.0.iter().zip(&issued) {
        match chan.status(c).unwrap() {
            TxStatus::Complete => assert_eq!(d, &src),
            _ => assert!(d.iter().all(|&b| b == 0)),
        }
    }
    // The channel goes on working afterwards.
    let mut dst = vec![0u8; 4096];
    scoped_copy(&chan, &mut dst, &src[..4096]).unwrap();
    assert_eq!(dst, src[..4096]);
}

#[test]
fn owned_copy_hands_the_buffers_back() {
    let engine = Engine::new();
    engine.register_device(sw("owned", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(10_000, 12);
    let t = chan.memcpy_owned(vec![0u8; 10_000], src.clone()).unwrap();
    let (result, dst, back) = t.wait(DEFAULT_WAIT_TIMEOUT);
    assert_eq!(result, Ok(()));
    assert_eq!(dst, src);
    assert_eq!(back, src);
}

#[test]
fn owned_copy_length_mismatch_returns_both_buffers() {
    let engine = Engine::new();
    engine.register_device(sw("mismatch", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let rejected = chan.memcpy_owned(vec![5u8; 3], vec![6u8; 4]).unwrap_err();
    assert_eq!(
        rejected.error,
        SubmitError::LengthMismatch { src: 4, dst: 3 }
    );
    assert_eq!(rejected.dst, vec![5u8; 3]);
    assert_eq!(rejected.src, vec![6u8; 4]);
    assert_eq!(chan.counters().memcpy_count, 0);
}

#[test]
fn dropping_an_unfinished_owned_transfer_waits_for_it() {
    let engine = Engine::new();
    let dev = FaultInjector::new(sw("dropwait", 1), FaultPlan::default());
    engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    dev.stall(0);
    let t = chan
        .memcpy_owned(vec![0u8; 4096], pattern(4096, 13))
        .unwrap();
    let cookie = t.cookie();
    let unstaller = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            dev.unstall(0);
        })
    };
    drop(t); // blocks until the unstalled copy completes (5 s bound)
    assert_eq!(
        chan.status(cookie),
        Ok(TxStatus::Complete),
        "waited, not cancelled"
    );
    assert_eq!(chan.counters().errors, 0);
    unstaller.join().unwrap();
}

// ---------------------------------------------------------------------------------------
// The software device
// ---------------------------------------------------------------------------------------

#[test]
fn software_copies_every_size_and_alignment_exactly() {
    let engine = Engine::new();
    engine.register_device(sw("sizes", 2)).unwrap();
    let chan = private(&engine, memcpy());
    let sizes = [0usize, 1, 3, 63, 4095, 4096, 4097, 65537, 1 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        for (src_off, dst_off) in [(0, 0), (1, 3), (7, 0), (5, 2)] {
            let src_buf = pattern(len + 8, (i * 10 + src_off) as u64);
            let mut dst_buf = vec![0xEEu8; len + 8];
            let src = &src_buf[src_off..src_off + len];
            scoped_copy(&chan, &mut dst_buf[dst_off..dst_off + len], src).unwrap();
            assert!(
                dst_buf[dst_off..dst_off + len] == *src,
                "len {len} offsets {src_off}/{dst_off}"
            );
            assert!(dst_buf[..dst_off].iter().all(|&b| b == 0xEE));
            assert!(dst_buf[dst_off + len..].iter().all(|&b| b == 0xEE));
        }
    }
}

#[test]
fn software_memset_fills_exactly() {
    let engine = Engine::new();
    engine.register_device(sw("memset", 1)).unwrap();
    let chan = private(&engine, memset());
    for len in [0usize, 1, 4097, 65537] {
        let mut buf = vec![0u8; len + 6];
        scope(|s| {
            s.memset(&chan, &mut buf[3..3 + len], 0xA5)
                .unwrap()
                .wait()
                .unwrap()
        });
        assert!(buf[3..3 + len].iter().all(|&b| b == 0xA5), "len {len}");
        assert_eq!(&buf[..3], &[0, 0, 0]);
        assert_eq!(&buf[3 + len..], &[0, 0, 0]);
    }
    assert_eq!(chan.counters().memset_count, 4);
}

/// The scheduler state (`R`, `S`, ...) of this process's thread named `comm`, if any.
fn thread_state(comm: &str) -> Option<char> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // "tid (comm) S ...": the state follows the last ')'.
            return stat[stat.rfind(')')? + 1..].trim_start().chars().next();
        }
    }
    None
}

#[test]
#[cfg(target_os = "linux")]
fn idle_software_workers_park() {
    let engine = Engine::new();
    engine.register_device(sw("swpark", 1)).unwrap();
    let chan = private(&engine, memcpy());
    let mut dst = vec![0u8; 4096];
    scoped_copy(&chan, &mut dst, &pattern(4096, 14)).unwrap();
    assert!(thread_state("swpark-ch0").is_some(), "the worker runs");
    let mut parked = false;
    for _ in 0..500 {
        if thread_state("swpark-ch0") == Some('S') {
            parked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(parked, "the idle worker never went to sleep");
    drop(chan); // frees the channel: joins the worker
                // The kernel drops the task from /proc shortly after the join returns.
    eventually("the worker thread is gone", || {
        thread_state("swpark-ch0").is_none()
    });
}

// ---------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------

/// Runs `n` waited copies of 256 bytes on `chan`; returns which ones failed (1-based),
/// checking that every completed one is exact.
fn failures(chan: &Channel, n: u64) -> Vec<u64> {
    let mut failed = Vec::new();
    for i in 1..=n {
        let src = pattern(256, i);
        let t = chan.memcpy_owned(vec![0u8; 256], src).unwrap();
        let (result, dst, src) = t.wait(DEFAULT_WAIT_TIMEOUT);
        match result {
            Ok(()) => assert_eq!(dst, src, "transfer {i}"),
            Err(WaitError::Failed(_)) => failed.push(i),
            Err(e) => panic!("transfer {i}: {e}"),
        }
    }
    failed
}

#[test]
fn fail_every_kth_transfer() {
    let engine = Engine::new();
    let plan = FaultPlan {
        fail_every: Some(3),
        ..FaultPlan::default()
    };
    let dev = FaultInjector::new(sw("every", 1), plan);
    engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    assert_eq!(failures(&chan, 10), vec![3, 6, 9]);
    assert_eq!(chan.counters().errors, 3);
    assert_eq!(dev.faults_injected(), 3);
    assert_eq!(chan.counters().memcpy_count, 10);
}

#[test]
fn seeded_fault_probability_is_reproducible() {
    let plan = |seed| FaultPlan {
        fail_probability: 0.3,
        seed,
        ..FaultPlan::default()
    };
    let run = |seed| {
        let engine = Engine::new();
        let dev = FaultInjector::new(sw("prob", 1), plan(seed));
        engine.register_device(dev.clone()).unwrap();
        let chan = private(&engine, memcpy());
        let failed = failures(&chan, 100);
        assert_eq!(chan.counters().errors, failed.len() as u64);
        assert_eq!(dev.faults_injected(), failed.len() as u64);
        failed
    };
    let first = run(42);
    assert_eq!(run(42), first);
    assert!(
        (10..=50).contains(&first.len()),
        "about 30 of 100: {}",
        first.len()
    );
    assert_ne!(run(43), first, "another seed, another pattern");
}

#[test]
fn vanish_mid_flight_ends_in_flight_work_and_refuses_more() {
    let engine = Engine::new();
    let dev = FaultInjector::new(sw("vanish", 1), FaultPlan::default());
    engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    let transfers: Vec<_> = (0..8)
        .map(|i| {
            chan.memcpy_owned(vec![0u8; 1 << 16], pattern(1 << 16, i))
                .unwrap()
        })
        .collect();
    chan.issue_pending();
    dev.vanish();
    let mut complete = 0;
    for t in transfers {
        let status = t.status();
        assert!(status.is_done(), "{status:?}");
        let (result, dst, src) = t.wait(DEFAULT_WAIT_TIMEOUT);
        if result.is_ok() {
            assert_eq!(dst, src);
            complete += 1;
        }
    }
    let errors = chan.counters().errors;
    assert_eq!(complete + errors, 8);
    let rejected = chan.memcpy_owned(vec![0u8; 4], vec![1u8; 4]).unwrap_err();
    assert_eq!(rejected.error, SubmitError::ChannelGone(chan.id()));
}

// ---------------------------------------------------------------------------------------
// Counters and the snapshot
// ---------------------------------------------------------------------------------------

#[test]
fn counters_count_submissions_bytes_and_users() {
    let engine = Engine::new();
    engine.register_device(sw("count", 1)).unwrap();
    let chan = private(&engine, both());
    let src = pattern(100, 15);
    let mut dst = vec![0u8; 300];
    let mut fill = vec![0u8; 10];
    scope(|s| {
        for part in dst.chunks_mut(100) {
            let _unwaited = s.memcpy(&chan, part, &src).unwrap();
        }
        let _unwaited = s.memset(&chan, &mut fill, 1).unwrap();
    });
    assert!(dst.chunks(100).all(|c| c == &src[..]));
    assert_eq!(fill, vec![1u8; 10]);
    let c = chan.counters();
    assert_eq!(
        (c.memcpy_count, c.memset_count, c.bytes_transferred),
        (3, 1, 310)
    );
    assert_eq!((c.in_use, c.errors), (1, 0));
}

#[test]
fn public_in_use_counts_potential_users() {
    let engine = Engine::new();
    engine.register_device(sw("users", 1)).unwrap();
    let c1 = engine.client(memcpy());
    let c2 = engine.client(both());
    let chan = c1.find_channel(Cap::Memcpy).unwrap();
    assert_eq!(chan.counters().in_use, 2);
    drop(c2);
    assert_eq!(chan.counters().in_use, 1);
    drop(c1);
    assert_eq!(chan.counters().in_use, 0);
}

#[test]
fn snapshot_serializes_devices_channels_and_table() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1]).unwrap();
    let id = engine.register_device(sw("snap", 2)).unwrap();
    let client = engine.client(memcpy());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(1000, 16);
    let mut dst = vec![0u8; 1000];
    scoped_copy(&chan, &mut dst, &src).unwrap();

    let snap = engine.snapshot();
    assert_eq!(snap.clients, 1);
    assert_eq!(snap.total_references(), 2);
    let c = snap.channel(chan.id()).unwrap();
    assert_eq!(
        (c.counters.memcpy_count, c.counters.bytes_transferred),
        (1, 1000)
    );

    let v = serde_json::to_value(&snap).unwrap();
    assert_eq!(v["clients"], 1);
    let dev = &v["devices"][0];
    assert_eq!(dev["id"], serde_json::json!(id));
    assert_eq!(dev["name"], "snap");
    assert_eq!(dev["capabilities"], serde_json::json!(["memcpy", "memset"]));
    assert_eq!(dev["references"], 2);
    let channels = dev["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2);
    let ours = channels
        .iter()
        .find(|c| c["id"] == serde_json::json!(chan.id()))
        .unwrap();
    assert_eq!(ours["memcpy_count"], 1);
    assert_eq!(ours["bytes_transferred"], 1000);
    assert_eq!(ours["in_use"], 1);
    assert_eq!(ours["errors"], 0);
    assert_eq!(ours["resources"], true);
    assert_eq!(ours["table_count"], 1);
    assert_eq!(v["table"]["online_cpus"], serde_json::json!([0, 1]));
    assert_eq!(
        v["table"]["memcpy"][0],
        serde_json::json!(channel_ids(&engine, id)[0])
    );
    assert!(v["table"]["memset"].as_array().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Regressions
// ---------------------------------------------------------------------------------------

#[test]
fn table_counts_reset_when_channels_leave_the_table() {
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1, 2, 3]).unwrap();
    let id = engine
        .register_device(MockDevice::new("a", memcpy(), 2))
        .unwrap();
    let client = engine.client(memcpy());
    let counts = |engine: &Engine| -> Vec<usize> {
        device(engine, id)
            .channels
            .iter()
            .map(|c| c.table_count)
            .collect()
    };
    assert_eq!(counts(&engine), vec![2, 2]);
    drop(client);
    assert_eq!(
        counts(&engine),
        vec![0, 0],
        "no slot points at them any more"
    );
    let chan = private(&engine, memcpy());
    assert_eq!(counts(&engine), vec![0, 0]);
    drop(chan);
}

#[test]
fn refused_submissions_do_not_count_as_transfers_for_faults() {
    let engine = Engine::new();
    let plan = FaultPlan {
        fail_every: Some(3),
        ..FaultPlan::default()
    };
    let dev = FaultInjector::new(
        SoftwareDevice::builder()
            .name("refused")
            .channels(1)
            .ring_size(2)
            .build(),
        plan,
    );
    engine.register_device(dev.clone()).unwrap();
    let chan = private(&engine, memcpy());
    let src = pattern(64, 17);
    let t1 = chan.memcpy_owned(vec![0u8; 64], src.clone()).unwrap();
    let t2 = chan.memcpy_owned(vec![0u8; 64], src.clone()).unwrap();
    let refused = chan.memcpy_owned(vec![0u8; 64], src.clone()).unwrap_err();
    assert_eq!(refused.error, SubmitError::RingFull { capacity: 2 });
    assert_eq!(t1.wait(DEFAULT_WAIT_TIMEOUT).0, Ok(()));
    assert_eq!(t2.wait(DEFAULT_WAIT_TIMEOUT).0, Ok(()));
    // The third *transfer* is the next accepted one, and it fails.
    let t3 = chan.memcpy_owned(vec![0u8; 64], src).unwrap();
    let cookie = t3.cookie();
    assert_eq!(
        t3.wait(DEFAULT_WAIT_TIMEOUT).0,
        Err(WaitError::Failed(cookie))
    );
    assert_eq!(dev.faults_injected(), 1);
}

// ---- API misuse: typed errors, no panic, counts unchanged -------------------------------

#[test]
fn misuse_waiting_on_another_channels_cookie_is_wrong_channel() {
    let engine = Engine::new();
    engine
        .register_device(SoftwareDevice::builder().channels(2).build())
        .unwrap();
    let a = engine.request_channel(memcpy(), |_| true).unwrap();
    let b = engine.request_channel(memcpy(), |_| true).unwrap();
    let transfer = a.memcpy_owned(vec![0u8; 64], vec![1u8; 64]).unwrap();
    let before = b.counters();
    assert_eq!(
        b.wait(transfer.cookie(), Duration::from_millis(10)),
        Err(WaitError::WrongChannel {
            cookie: transfer.cookie(),
            channel: b.id()
        })
    );
    assert!(matches!(
        b.status(transfer.cookie()),
        Err(WaitError::WrongChannel { .. })
    ));
    assert_eq!(b.counters(), before);
    let (result, dst, _) = transfer.wait(Duration::from_secs(5));
    assert_eq!(result, Ok(()));
    assert_eq!(dst, vec![1u8; 64]);
}

#[test]
fn misuse_a_channel_kept_after_its_private_release_refuses_work() {
    let engine = Engine::new();
    let device = SoftwareDevice::builder().channels(1).build();
    engine.register_device(device.clone()).unwrap();
    let private = engine.request_channel(memcpy(), |_| true).unwrap();
    let kept: Channel = (*private).clone();
    private.release();
    assert_eq!(device.running_workers(), 0, "released: resources freed");
    let before = kept.counters();
    let rejected = kept.memcpy_owned(vec![0u8; 8], vec![1u8; 8]).unwrap_err();
    assert_eq!(rejected.error, SubmitError::NoResources(kept.id()));
    assert_eq!(rejected.dst, vec![0u8; 8], "buffers handed back untouched");
    assert_eq!(kept.counters(), before);
}

#[test]
fn misuse_unregistering_or_removing_twice_is_unknown_device() {
    let engine = Engine::new();
    let a = engine
        .register_device(SoftwareDevice::builder().channels(1).build())
        .unwrap();
    let b = engine
        .register_device(SoftwareDevice::builder().channels(1).build())
        .unwrap();
    engine.unregister_device(a).unwrap();
    assert_eq!(
        engine.unregister_device(a),
        Err(UnregisterError::UnknownDevice(a))
    );
    assert_eq!(
        engine.remove_device(a),
        Err(UnregisterError::UnknownDevice(a))
    );
    assert_eq!(engine.remove_device(b), Ok(0));
    assert_eq!(
        engine.remove_device(b),
        Err(UnregisterError::UnknownDevice(b))
    );
    assert_eq!(
        engine.unregister_device(b),
        Err(UnregisterError::UnknownDevice(b))
    );
    assert!(engine.snapshot().devices.is_empty());
    assert_eq!(engine.total_references(), 0);
}

// ---- the doorbell ------------------------------------------------------------------------

/// A batch issued once and then waited on transfer by transfer rings the doorbell once;
/// the scope's end does not wait on them again. A transfer never issued is issued by its
/// wait, as `dma_sync_wait` does.
#[test]
fn a_batch_rings_the_doorbell_once() {
    let dev = MockDevice::new("mock", Cap::Memcpy.into(), 1);
    let engine = Engine::new();
    engine.register_device(dev.clone()).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(4 * 4096, 3);
    let mut dst = vec![0u8; src.len()];
    let before = dev.doorbells.load(std::sync::atomic::Ordering::SeqCst);
    dmaengine::scope(|s| {
        let transfers: Vec<_> = dst
            .chunks_mut(4096)
            .zip(src.chunks(4096))
            .map(|(d, sr)| s.memcpy(&chan, d, sr).unwrap())
            .collect();
        chan.issue_pending();
        for t in &transfers {
            t.wait().unwrap();
        }
    });
    assert_eq!(dst, src);
    let rung = |n| before + n;
    assert_eq!(
        dev.doorbells.load(std::sync::atomic::Ordering::SeqCst),
        rung(1)
    );
    // Submitted, never issued: the wait rings the doorbell itself.
    let mut one = vec![0u8; 64];
    dmaengine::scope(|s| {
        let t = s.memcpy(&chan, &mut one, &src[..64]).unwrap();
        t.wait().unwrap();
    });
    assert_eq!(one, src[..64]);
    assert_eq!(
        dev.doorbells.load(std::sync::atomic::Ordering::SeqCst),
        rung(2)
    );
}
