//! `hearth.v1.Templates`: named session specs with warm pools. Records live in
//! `templates.rs`; pools (claims and the reconciler) in `pools.rs`.

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    CreateTemplateRequest, DeleteRegistryCredentialRequest, DeleteRegistryCredentialResponse,
    DeleteTemplateRequest, DeleteTemplateResponse, GetTemplateRequest,
    ListRegistryCredentialsRequest, ListRegistryCredentialsResponse, ListTemplatesRequest,
    ListTemplatesResponse, RegistryCredential, SetRegistryCredentialRequest, Template,
    UpdateTemplateRequest, templates_server::Templates,
};
use tonic::{Request, Response, Status};

use crate::{auth, cluster::Cluster, convert, pools};

/// The Templates service.
pub struct TemplatesService {
    cluster: Arc<Cluster>,
}

impl TemplatesService {
    /// A service over the shared state.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl Templates for TemplatesService {
    async fn create_template(
        &self,
        request: Request<CreateTemplateRequest>,
    ) -> Result<Response<Template>, Status> {
        let caller = auth::caller(&request)?;
        let checked = convert::template(request.into_inner().template)?;
        let leader = self.cluster.require_leader().await?;
        let c = &self.cluster;
        let stored = {
            let _writes = c.templates.writes.lock().await;
            c.templates
                .create(c, &leader, &caller.tenant, checked)
                .await?
        };
        c.events.emit(
            "template.created",
            "",
            "",
            format!(
                "template {} created with a warm pool of {}",
                stored.template.name, stored.template.warm_pool
            ),
        );
        c.pools.wake();
        Ok(Response::new(pools::describe(c, &stored)))
    }

    async fn get_template(
        &self,
        request: Request<GetTemplateRequest>,
    ) -> Result<Response<Template>, Status> {
        let caller = auth::caller(&request)?;
        let name = &request.get_ref().name;
        convert::template_name("name", name)?;
        self.cluster.require_leader().await?;
        let stored = self.cluster.templates.get(&caller.tenant, name)?;
        Ok(Response::new(pools::describe(&self.cluster, &stored)))
    }

    async fn list_templates(
        &self,
        request: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.cluster.require_leader().await?;
        let templates = self
            .cluster
            .templates
            .list(Some(&caller.tenant))
            .iter()
            .map(|t| pools::describe(&self.cluster, t))
            .collect();
        Ok(Response::new(ListTemplatesResponse { templates }))
    }

    async fn update_template(
        &self,
        request: Request<UpdateTemplateRequest>,
    ) -> Result<Response<Template>, Status> {
        let caller = auth::caller(&request)?;
        let checked = convert::template(request.into_inner().template)?;
        let leader = self.cluster.require_leader().await?;
        let c = &self.cluster;
        let (before, after) = {
            let _writes = c.templates.writes.lock().await;
            let before = c.templates.get(&caller.tenant, &checked.name)?;
            let after = c
                .templates
                .update(c, &leader, &caller.tenant, checked)
                .await?;
            (before, after)
        };
        let spec_changed = before.spec.spec != after.spec.spec;
        c.events.emit(
            "template.updated",
            "",
            "",
            format!(
                "template {} updated: warm pool {} → {}{}",
                after.template.name,
                before.template.warm_pool,
                after.template.warm_pool,
                if spec_changed {
                    "; new spec, so its pool members are replaced"
                } else {
                    ""
                }
            ),
        );
        // A new spec or size deserves a fresh try even if filling had been failing.
        c.pools.forget(&after.id());
        c.pools.wake();
        Ok(Response::new(pools::describe(c, &after)))
    }

    async fn delete_template(
        &self,
        request: Request<DeleteTemplateRequest>,
    ) -> Result<Response<DeleteTemplateResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = &request.get_ref().name;
        convert::template_name("name", name)?;
        let leader = self.cluster.require_leader().await?;
        let stopped = pools::delete_template(&self.cluster, &leader, &caller.tenant, name).await?;
        Ok(Response::new(DeleteTemplateResponse {
            pool_sessions_stopped: stopped,
        }))
    }

    async fn set_registry_credential(
        &self,
        request: Request<SetRegistryCredentialRequest>,
    ) -> Result<Response<RegistryCredential>, Status> {
        let caller = auth::caller(&request)?;
        let SetRegistryCredentialRequest {
            registry,
            username,
            password,
        } = request.into_inner();
        let leader = self.cluster.require_leader().await?;
        let c = &self.cluster;
        let shown = c
            .credentials
            .set(c, &leader, &caller.tenant, &registry, username, password)
            .await?;
        // Never the password; the user name and registry only.
        c.events.emit(
            "credentials.set",
            "",
            "",
            format!(
                "tenant {} set credentials for registry {} (user {})",
                caller.tenant, shown.registry, shown.username
            ),
        );
        Ok(Response::new(shown))
    }

    async fn list_registry_credentials(
        &self,
        request: Request<ListRegistryCredentialsRequest>,
    ) -> Result<Response<ListRegistryCredentialsResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.cluster.require_leader().await?;
        let credentials = self
            .cluster
            .credentials
            .list(&self.cluster, &caller.tenant)
            .await?;
        Ok(Response::new(ListRegistryCredentialsResponse {
            credentials,
        }))
    }

    async fn delete_registry_credential(
        &self,
        request: Request<DeleteRegistryCredentialRequest>,
    ) -> Result<Response<DeleteRegistryCredentialResponse>, Status> {
        let caller = auth::caller(&request)?;
        let leader = self.cluster.require_leader().await?;
        let c = &self.cluster;
        let registry = &request.get_ref().registry;
        c.credentials
            .delete(c, &leader, &caller.tenant, registry)
            .await?;
        c.events.emit(
            "credentials.deleted",
            "",
            "",
            format!(
                "tenant {} deleted its credentials for registry {registry}",
                caller.tenant
            ),
        );
        Ok(Response::new(DeleteRegistryCredentialResponse {}))
    }
}
