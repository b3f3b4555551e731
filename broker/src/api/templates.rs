//! `hearth.v1.Templates`. Templates and warm pools are a later capability: until then every
//! RPC answers UNIMPLEMENTED and says so.

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    CreateTemplateRequest, DeleteTemplateRequest, DeleteTemplateResponse, GetTemplateRequest,
    ListTemplatesRequest, ListTemplatesResponse, Template, UpdateTemplateRequest,
    templates_server::Templates,
};
use tonic::{Request, Response, Status};

use super::unimplemented;
use crate::cluster::Cluster;

const WHAT: &str = "templates and warm pools are not available yet";

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
        _: Request<CreateTemplateRequest>,
    ) -> Result<Response<Template>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Templates/CreateTemplate", WHAT).await)
    }

    async fn get_template(
        &self,
        _: Request<GetTemplateRequest>,
    ) -> Result<Response<Template>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Templates/GetTemplate", WHAT).await)
    }

    async fn list_templates(
        &self,
        _: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Templates/ListTemplates", WHAT).await)
    }

    async fn update_template(
        &self,
        _: Request<UpdateTemplateRequest>,
    ) -> Result<Response<Template>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Templates/UpdateTemplate", WHAT).await)
    }

    async fn delete_template(
        &self,
        _: Request<DeleteTemplateRequest>,
    ) -> Result<Response<DeleteTemplateResponse>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Templates/DeleteTemplate", WHAT).await)
    }
}
