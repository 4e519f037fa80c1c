//! How this process joins its consumer groups: `--kafka-instance-id`
//! resolved once, before any consumer starts, so that every group of the
//! process (projectors, saga, inventory) sees the same id.

use crate::config::{Config, Membership, Role};
use cqrs_kafka::membership::{derived_base, host_name};
use cqrs_kafka::MemberSlot;
use cqrs_sql::Db;

/// The config every consumer of this process reads (its instance id
/// resolved: explicit, derived, or none), and for a derived id the slot
/// that keeps it ours while the process lives.
pub(super) async fn resolve(
    config: &Config,
    read: &Db,
) -> anyhow::Result<(Config, Option<MemberSlot>)> {
    let consumes = config.runs(Role::Projector) || config.hosts_inventory(Role::Projector);
    let mut config = config.clone();
    let Some(k) = config.kafka.as_mut() else {
        return Ok((config, None));
    };
    if !consumes {
        // No consumer in this process.
        k.instance_id = None;
        return Ok((config, None));
    }
    let (id, slot) = match k.membership() {
        Membership::Static(id) => (Some(id), None),
        Membership::Dynamic => (None, None),
        Membership::Derived => {
            let data_dir = std::path::absolute(&config.data_dir)
                .unwrap_or_else(|_| config.data_dir.clone())
                .display()
                .to_string();
            let mut roles: Vec<String> = config.roles.iter().map(|r| format!("{r:?}")).collect();
            roles.sort();
            let parts = [
                roles.join(","),
                data_dir,
                k.group_id(),
                k.saga_group_id(),
                k.topic.clone(),
            ];
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let base = derived_base("orders", &host_name(), &parts);
            let slot = MemberSlot::claim(&base, read).await?;
            (Some(slot.id().to_owned()), Some(slot))
        }
    };
    match &id {
        Some(id) => tracing::info!(instance_id = %id, derived = slot.is_some(),
            "joining the consumer groups as a static member"),
        None => tracing::info!("joining the consumer groups as a dynamic member"),
    }
    k.instance_id = id;
    Ok((config, slot))
}
