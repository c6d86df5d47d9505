//! Loom models of the reference-counting core: clients, references, register/unregister,
//! private channels, forced removal and rebalance, racing each other.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p dmaengine --test loom --release`.
//! Under `cfg(loom)` the engine's mutex, atomics and table cell are loom's (see `sync.rs`),
//! so every interleaving of the engine's critical sections is explored; the mock provider
//! checks that channel resources are never allocated or freed twice.
#![cfg(loom)]

mod common;

use common::MockDevice;
use dmaengine::{Cap, CapMask, DeviceId, Engine, SubmitError, UnregisterError};
use loom::thread;

fn memcpy() -> CapMask {
    Cap::Memcpy.into()
}

/// Explores every interleaving (`None`), or those with at most `bound` preemptions, and
/// reports how many it ran.
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = bound;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "explored {} interleavings",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A copy of 4 bytes on `chan`; `Ok(true)` if done.
fn copy(chan: &dmaengine::Channel) -> Result<bool, SubmitError> {
    let src = vec![7u8; 4];
    match chan.memcpy_owned(vec![0u8; 4], src) {
        Ok(t) => {
            let (result, dst, src) = t.wait(dmaengine::DEFAULT_WAIT_TIMEOUT);
            assert_eq!(result, Ok(()));
            assert_eq!(dst, src);
            Ok(true)
        }
        Err(rejected) => Err(rejected.error),
    }
}

/// Unregisters `id`, which nobody pins any more.
#[track_caller]
fn unregister_idle(engine: &Engine, id: DeviceId) {
    assert_eq!(engine.unregister_device(id), Ok(()));
}

#[test]
fn client_lifecycle_races_register_and_unregister() {
    model(None, || {
        let engine = Engine::new();
        let a = engine
            .register_device(MockDevice::new("a", memcpy(), 1))
            .unwrap();

        let e1 = engine.clone();
        let user = thread::spawn(move || {
            let client = e1.client(memcpy());
            // `a` is registered and pinned by this client: a channel is always found, and
            // a channel in the table always has resources.
            let chan = client.find_channel(Cap::Memcpy).expect("a channel");
            assert_eq!(copy(&chan), Ok(true));
            drop(client);
        });

        let e2 = engine.clone();
        let admin = thread::spawn(move || {
            let b = e2
                .register_device(MockDevice::new("b", memcpy(), 1))
                .unwrap();
            match e2.unregister_device(b) {
                Ok(()) => None,
                Err(UnregisterError::Busy {
                    clients,
                    references,
                    private_channels,
                    ..
                }) => {
                    assert_eq!((clients, references, private_channels), (1, 1, 0));
                    Some(b)
                }
                Err(e) => panic!("unexpected: {e}"),
            }
        });

        user.join().unwrap();
        let still_registered = admin.join().unwrap();
        assert_eq!(engine.total_references(), 0);
        if let Some(b) = still_registered {
            unregister_idle(&engine, b);
        }
        unregister_idle(&engine, a);
    });
}

#[test]
fn private_request_races_a_public_client() {
    model(None, || {
        let engine = Engine::new();
        let dev = MockDevice::new("a", memcpy(), 1);
        let a = engine.register_device(dev.clone()).unwrap();

        let e1 = engine.clone();
        let private = thread::spawn(move || {
            // Succeeds only if no public client holds the device at that moment.
            match e1.request_channel(memcpy(), |_| true) {
                Ok(chan) => {
                    assert_eq!(chan.counters().in_use, 1);
                    assert_eq!(copy(&chan), Ok(true));
                    true
                }
                Err(_) => false,
            }
        });

        let e2 = engine.clone();
        let public = thread::spawn(move || {
            let client = e2.client(memcpy());
            // None while the device is private; otherwise a usable channel.
            let found = client.find_channel(Cap::Memcpy);
            if let Some(chan) = &found {
                assert_eq!(copy(chan), Ok(true));
            }
            found.is_some()
        });

        let got_private = private.join().unwrap();
        let got_public = public.join().unwrap();
        assert!(
            got_private || got_public,
            "one of them always gets the channel"
        );
        assert_eq!(engine.total_references(), 0);
        assert_eq!(dev.allocated_channels(), 0);
        unregister_idle(&engine, a);
    });
}

#[test]
fn forced_removal_races_a_user_and_a_rebalance() {
    model(None, || {
        let engine = Engine::new();
        engine.set_online_cpus(&[0]).unwrap();
        let dev_a = MockDevice::new("a", memcpy(), 1);
        let dev_b = MockDevice::new("b", memcpy(), 1);
        let a = engine.register_device(dev_a.clone()).unwrap();
        let b = engine.register_device(dev_b.clone()).unwrap();
        let client = engine.client(memcpy());

        let e1 = engine.clone();
        let remover = thread::spawn(move || {
            assert_eq!(e1.remove_device(a), Ok(1));
            e1.set_online_cpus(&[0, 1]).unwrap();
        });

        // The user sees a's channel (copy works, or the device is already gone) or b's.
        let chan = client.find_channel(Cap::Memcpy).expect("a channel");
        match copy(&chan) {
            Ok(true) => {}
            Err(SubmitError::ChannelGone(_)) | Err(SubmitError::NoResources(_)) => {
                assert_eq!(chan.device(), a)
            }
            other => panic!("unexpected: {other:?}"),
        }

        remover.join().unwrap();
        assert_eq!(client.find_channel(Cap::Memcpy).unwrap().device(), b);
        drop(client);
        assert_eq!(engine.total_references(), 0);
        assert_eq!(dev_a.allocated_channels(), 0);
        assert_eq!(dev_b.allocated_channels(), 0);
        assert_eq!(
            engine.unregister_device(a),
            Err(UnregisterError::UnknownDevice(a))
        );
        unregister_idle(&engine, b);
    });
}

#[test]
fn two_clients_race_device_churn_and_cpu_hotplug() {
    model(Some(3), || {
        let engine = Engine::new();
        let dev_a = MockDevice::new("a", CapMask::of(&[Cap::Memcpy, Cap::Memset]), 2);
        let a = engine.register_device(dev_a.clone()).unwrap();

        let users: Vec<_> = [memcpy(), Cap::Memset.into()]
            .into_iter()
            .map(|caps| {
                let engine = engine.clone();
                thread::spawn(move || {
                    let client = engine.client(caps);
                    let cap = caps.iter().next().unwrap();
                    let chan = client.find_channel(cap).expect("a is pinned: a channel");
                    if cap == Cap::Memcpy {
                        assert_eq!(copy(&chan), Ok(true));
                    }
                })
            })
            .collect();

        let e = engine.clone();
        let admin = thread::spawn(move || {
            let dev_b = MockDevice::new("b", memcpy(), 1);
            let b = e.register_device(dev_b.clone()).unwrap();
            e.set_online_cpus(&[1]).unwrap();
            let left = match e.unregister_device(b) {
                Ok(()) => None,
                Err(UnregisterError::Busy { clients, .. }) => {
                    assert_eq!(clients, 1, "only the memcpy client pins b");
                    Some(b)
                }
                Err(err) => panic!("unexpected: {err}"),
            };
            (left, dev_b)
        });

        for user in users {
            user.join().unwrap();
        }
        let (left, dev_b) = admin.join().unwrap();
        assert_eq!(engine.total_references(), 0);
        assert_eq!(dev_a.allocated_channels(), 0);
        assert_eq!(dev_b.allocated_channels(), 0);
        if let Some(b) = left {
            unregister_idle(&engine, b);
        }
        unregister_idle(&engine, a);
    });
}
