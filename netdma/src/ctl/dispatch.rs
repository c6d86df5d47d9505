//! Carrying out one request against the offload and its engine.

use crate::config::NetDmaConfig;
use crate::control::{ControlError, NetDma};
use dmaengine::{DeviceSnapshot, Engine, UnregisterError};
use serde_json::Value;

use super::protocol::*;

/// Parses one request line and carries it out.
pub(super) fn handle_line(line: &[u8], netdma: &NetDma) -> Response {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => return Response::bad_request(format!("malformed request: not UTF-8 ({e})")),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Response::bad_request(format!("malformed JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return Response::bad_request("a request must be a JSON object with a `cmd` field");
    };
    let cmd = match obj.get("cmd") {
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Response::bad_request("`cmd` must be a string"),
        None => {
            return Response::bad_request(format!(
                "missing `cmd`; commands: {}",
                COMMANDS.join(", ")
            ))
        }
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Response::bad_request(format!(
            "unknown command `{cmd}`; commands: {}",
            COMMANDS.join(", ")
        ));
    }
    match serde_json::from_value::<Request>(value) {
        // Concurrent operators cannot undo each other's changes: `NetDma`'s controls are
        // serialized where they change the configuration.
        Ok(req) => execute(&req, netdma),
        Err(e) => Response::bad_request(format!("invalid `{cmd}` request: {e}")),
    }
}

/// Carries out one request against `netdma` and its engine.
pub fn execute(req: &Request, netdma: &NetDma) -> Response {
    tracing::debug!(?req, "control request");
    match req {
        Request::SysctlGet { key } => match netdma.get(key) {
            Ok(value) => Response::ok(serde_json::json!({ "key": key, "value": value })),
            Err(e) => Response::refused(e.to_string()),
        },
        Request::SysctlSet { key, value } => {
            let old = match netdma.get(key) {
                Ok(v) => v,
                Err(e) => return Response::refused(e.to_string()),
            };
            match netdma.set(key, value) {
                Ok(()) => {
                    let new = netdma.get(key).unwrap_or_else(|_| value.clone());
                    tracing::info!(%key, %old, value = %new, "sysctl set over the control socket");
                    Response::ok(serde_json::json!({ "key": key, "old": old, "value": new }))
                }
                Err(e) => Response::refused(e.to_string()),
            }
        }
        Request::SysctlAll => {
            let cfg = netdma.config();
            Response::ok(sysctl_all(&cfg))
        }
        Request::DmaEnable => {
            let changed = match netdma.enable() {
                Ok(()) => true,
                Err(ControlError::AlreadyEnabled) => false,
                Err(e) => return Response::refused(e.to_string()),
            };
            Response::ok(dma_state(netdma, changed))
        }
        Request::DmaDisable => {
            let changed = match netdma.disable() {
                Ok(()) => true,
                Err(ControlError::AlreadyDisabled) => false,
                Err(e) => return Response::refused(e.to_string()),
            };
            Response::ok(dma_state(netdma, changed))
        }
        Request::DevList => Response::ok(dev_list(netdma)),
        Request::DevRemove { name, force } => dev_remove(netdma, name, *force),
        Request::Stats => Response::ok(netdma.snapshot()),
    }
}

fn sysctl_all(cfg: &NetDmaConfig) -> Vec<SysctlEntry> {
    NetDmaConfig::keys()
        .iter()
        .map(|k| SysctlEntry {
            key: k.sysctl.to_owned(),
            value: k.value(cfg),
            writable: k.writable,
            range: k.range(),
        })
        .collect()
}

fn dma_state(netdma: &NetDma, changed: bool) -> DmaState {
    let snap = netdma.engine().snapshot();
    let enabled = netdma.is_enabled();
    let note = (enabled && snap.devices.is_empty()).then(|| {
        "no DMA device is registered: every read is copied by the CPU (counted as no_channel) \
         until one is"
            .to_owned()
    });
    DmaState {
        enabled,
        changed,
        holds_client: netdma.holds_client(),
        references: snap.total_references(),
        devices: snap.devices.len(),
        note,
    }
}

fn device_info(d: &DeviceSnapshot, netdma_holds: bool) -> DeviceInfo {
    DeviceInfo {
        id: d.id.to_string(),
        name: d.name.clone(),
        channels: d.channels.len(),
        references: d.references,
        clients: d.clients,
        private_channels: d.private_channels,
        netdma_holds: netdma_holds && d.clients > 0,
        channel_list: d
            .channels
            .iter()
            .map(|c| ChannelInfo {
                name: c.id.to_string(),
                in_use: c.counters.in_use,
                table_count: c.table_count,
                memcpy_count: c.counters.memcpy_count,
                bytes_transferred: c.counters.bytes_transferred,
                errors: c.counters.errors,
            })
            .collect(),
    }
}

fn dev_list(netdma: &NetDma) -> Vec<DeviceInfo> {
    let holds = netdma.holds_client();
    netdma
        .engine()
        .snapshot()
        .devices
        .iter()
        .map(|d| device_info(d, holds))
        .collect()
}

/// Finds the device `name` names: its id (`dev0`), or its provider's name if unique.
fn resolve(engine: &Engine, name: &str) -> Result<DeviceSnapshot, String> {
    let devices = engine.snapshot().devices;
    if let Some(d) = devices.iter().find(|d| d.id.to_string() == name) {
        return Ok(d.clone());
    }
    let named: Vec<&DeviceSnapshot> = devices.iter().filter(|d| d.name == name).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let known: Vec<String> = devices
                .iter()
                .map(|d| format!("{} ({})", d.name, d.id))
                .collect();
            Err(format!(
                "no device named `{name}`; devices: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        }
        many => {
            let ids: Vec<String> = many.iter().map(|d| d.id.to_string()).collect();
            Err(format!(
                "`{name}` is ambiguous: devices {} share that name; name one by its id",
                ids.join(", ")
            ))
        }
    }
}

fn dev_remove(netdma: &NetDma, name: &str, force: bool) -> Response {
    let engine = netdma.engine();
    let dev = match resolve(engine, name) {
        Ok(d) => d,
        Err(msg) => return Response::refused(msg),
    };
    let label = format!("{} ({})", dev.name, dev.id);
    let result = if force {
        engine.remove_device(dev.id)
    } else {
        engine.unregister_device(dev.id).map(|()| 0)
    };
    match result {
        Ok(dropped) => {
            tracing::info!(device = %label, force, references_dropped = dropped, "device removed over the control socket");
            Response::ok(Removed {
                id: dev.id.to_string(),
                name: dev.name,
                forced: force,
                references_dropped: dropped,
            })
        }
        Err(UnregisterError::Busy {
            clients,
            private_channels,
            references,
            ..
        }) => {
            let holder = if netdma.holds_client() && clients > 0 {
                "; netdma offload holds it: run `dma disable` first"
            } else {
                ""
            };
            Response::refused(format!(
                "cannot remove device {label}: in use, pinned by {clients} client(s) and \
                 {private_channels} private channel(s) ({references} channel references)\
                 {holder} (or remove it by force)"
            ))
        }
        Err(e) => Response::refused(format!("cannot remove device {label}: {e}")),
    }
}
