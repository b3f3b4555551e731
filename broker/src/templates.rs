//! Templates: named session specs, stored per tenant.
//!
//! Only the leader writes templates, always through fenced transactions, so it keeps them
//! all in memory (loaded when it takes over) and answers reads without touching the store.
//! Writes are serialised by [`Templates::writes`], which the warm-pool reconciler holds
//! for each of its passes too: a pool is never refilled from a template that is being
//! replaced or deleted.
//!
//! Keys carry the tenant (`templates/<tenant>/<name>`, `pool/<tenant>/<template>/<id>`),
//! so two tenants may use the same name.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use hearth_sdk::proto::v1::Template;
use prost::Message as _;

use crate::{
    cluster::{Cluster, LeaderState},
    convert::{self, CheckedSpec, CheckedTemplate},
    error::{Error, Result},
    store::{Compare, StoreError, Txn},
};

/// Key prefix of template records.
pub const TEMPLATES_PREFIX: &str = "templates/";
/// Key prefix of warm-pool membership keys.
pub const POOL_PREFIX: &str = "pool/";

/// The key of a template record.
pub fn template_key(tenant: &str, name: &str) -> String {
    format!("{TEMPLATES_PREFIX}{tenant}/{name}")
}

/// The key that makes session `id` an unclaimed member of a template's warm pool. It is
/// created in the same transaction as the session record and deleted in the one that
/// claims or stops the session, so membership is never half-recorded.
pub fn pool_key(tenant: &str, template: &str, id: &str) -> String {
    format!("{POOL_PREFIX}{tenant}/{template}/{id}")
}

/// Splits a pool key into (tenant, template, session id).
pub fn parse_pool_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(POOL_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let (tenant, template, id) = (parts.next()?, parts.next()?, parts.next()?);
    (!tenant.is_empty() && !template.is_empty() && !id.is_empty() && !id.contains('/'))
        .then_some((tenant, template, id))
}

/// Identifies a template: (tenant, name).
pub type TemplateId = (String, String);

/// A stored template.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The record as stored (`pool_ready` is filled in only on the way out).
    pub template: Template,
    /// Its spec, checked, with defaults filled in.
    pub spec: CheckedSpec,
    /// The record key's mod revision: updates compare on it.
    pub revision: i64,
}

impl Stored {
    /// (tenant, name).
    pub fn id(&self) -> TemplateId {
        (self.template.tenant.clone(), self.template.name.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn decode(kv: &crate::store::KeyValue) -> Result<Stored> {
    let template = Template::decode(kv.value.as_slice()).map_err(|e| StoreError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    let spec = convert::session_spec(template.spec.clone()).map_err(|e| StoreError::Corrupt {
        key: kv.key.clone(),
        reason: format!("stored spec no longer validates: {e}"),
    })?;
    Ok(Stored {
        template,
        spec,
        revision: kv.mod_revision,
    })
}

/// The leader's templates.
#[derive(Default)]
pub struct Templates {
    entries: Mutex<BTreeMap<TemplateId, Arc<Stored>>>,
    /// Held by every template write and by each warm-pool reconciler pass.
    pub writes: tokio::sync::Mutex<()>,
}

impl Templates {
    /// Loads every template when becoming leader.
    pub async fn load(&self, cluster: &Cluster) -> Result<()> {
        let mut entries = BTreeMap::new();
        for kv in cluster.store.list(TEMPLATES_PREFIX).await? {
            let stored = decode(&kv)?;
            entries.insert(stored.id(), Arc::new(stored));
        }
        tracing::info!(templates = entries.len(), "loaded templates");
        *lock(&self.entries) = entries;
        Ok(())
    }

    /// Forgets everything (leadership lost).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// One template of `tenant`.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Arc<Stored>> {
        lock(&self.entries)
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "template",
                id: name.to_owned(),
            })
    }

    /// The templates of `tenant` (every tenant's with `None`), ordered by tenant and name.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Arc<Stored>> {
        lock(&self.entries)
            .values()
            .filter(|t| tenant.is_none_or(|tenant| t.template.tenant == tenant))
            .cloned()
            .collect()
    }

    /// Creates a template; ALREADY_EXISTS if the name is taken. Call with `writes` held.
    pub async fn create(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        tenant: &str,
        checked: CheckedTemplate,
    ) -> Result<Arc<Stored>> {
        cluster
            .config
            .check_spec(tenant, "template.spec", &checked.spec.spec)?;
        let key = template_key(tenant, &checked.name);
        let template = Template {
            name: checked.name.clone(),
            tenant: tenant.to_owned(),
            description: checked.description,
            spec: Some(checked.spec.spec.clone()),
            warm_pool: checked.warm_pool,
            pool_ready: 0,
            created_at: Some(hearth_sdk::time::timestamp(SystemTime::now())),
        };
        let txn = Txn::fenced(leader.epoch)
            .when(Compare::Absent(key.clone()))
            .put(key.clone(), template.encode_to_vec());
        let outcome = self.write(cluster, leader, txn).await?;
        if !outcome.succeeded {
            return Err(Error::AlreadyExists {
                kind: "template",
                id: checked.name,
            });
        }
        let stored = Arc::new(Stored {
            template,
            spec: checked.spec,
            revision: outcome.revision,
        });
        lock(&self.entries).insert(stored.id(), stored.clone());
        Ok(stored)
    }

    /// Replaces a template's description, spec and pool size. Call with `writes` held.
    pub async fn update(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        tenant: &str,
        checked: CheckedTemplate,
    ) -> Result<Arc<Stored>> {
        cluster
            .config
            .check_spec(tenant, "template.spec", &checked.spec.spec)?;
        let current = self.get(tenant, &checked.name)?;
        let key = template_key(tenant, &checked.name);
        let template = Template {
            description: checked.description,
            spec: Some(checked.spec.spec.clone()),
            warm_pool: checked.warm_pool,
            ..current.template.clone()
        };
        let txn = Txn::fenced(leader.epoch)
            .when(Compare::ModRevision(key.clone(), current.revision))
            .put(key, template.encode_to_vec());
        let outcome = self.write(cluster, leader, txn).await?;
        if !outcome.succeeded {
            // Only this leader writes templates and `writes` is held: the record changed
            // under us, which means the store was edited behind the broker's back.
            return Err(Error::Unavailable(format!(
                "template {:?} changed in the store during the update; retry",
                checked.name
            )));
        }
        let stored = Arc::new(Stored {
            template,
            spec: checked.spec,
            revision: outcome.revision,
        });
        lock(&self.entries).insert(stored.id(), stored.clone());
        Ok(stored)
    }

    /// Deletes a template record; NOT_FOUND if there is none. Call with `writes` held.
    pub async fn delete(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        tenant: &str,
        name: &str,
    ) -> Result<Arc<Stored>> {
        let current = self.get(tenant, name)?;
        let txn = Txn::fenced(leader.epoch).delete(template_key(tenant, name));
        self.write(cluster, leader, txn).await?;
        lock(&self.entries).remove(&current.id());
        Ok(current)
    }

    /// Applies a transaction. A failed one is only the caller's compare failing if the
    /// leader key is still ours; otherwise this broker has been deposed.
    async fn write(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        txn: Txn,
    ) -> Result<crate::store::TxnOutcome> {
        crate::sessions::fenced_write(cluster, leader, txn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keys_round_trip() {
        let key = pool_key("default", "llama", "01J0ABC");
        assert_eq!(key, "pool/default/llama/01J0ABC");
        assert_eq!(parse_pool_key(&key), Some(("default", "llama", "01J0ABC")));
        assert_eq!(parse_pool_key("pool/default/llama"), None);
        assert_eq!(parse_pool_key("pool/default//x"), None);
        assert_eq!(parse_pool_key("pool/a/b/c/d"), None);
        assert_eq!(parse_pool_key("templates/default/llama"), None);
        assert_eq!(template_key("default", "llama"), "templates/default/llama");
    }
}
