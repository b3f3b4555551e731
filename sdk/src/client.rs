//! A typed client over the user-facing services.

use tonic::transport::{Channel, Endpoint};

use crate::proto::v1::{
    admin_client::AdminClient, sessions_client::SessionsClient, templates_client::TemplatesClient,
};

/// Errors from connecting.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be parsed.
    #[error("invalid broker URL {url:?}: {source}")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// Why it was refused.
        source: tonic::transport::Error,
    },
    /// The broker could not be reached.
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        /// Where we dialled.
        url: String,
        /// Why it failed.
        source: tonic::transport::Error,
    },
}

/// A connection to a broker, with one client per service sharing the channel.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to a broker such as `http://127.0.0.1:7700`.
    pub async fn connect(url: impl Into<String>) -> Result<Self, ClientError> {
        let url = url.into();
        let endpoint =
            Endpoint::from_shared(url.clone()).map_err(|source| ClientError::InvalidUrl {
                url: url.clone(),
                source,
            })?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect { url, source })?;
        Ok(Self { channel })
    }

    /// The `Sessions` service.
    pub fn sessions(&self) -> SessionsClient<Channel> {
        SessionsClient::new(self.channel.clone())
    }

    /// The `Templates` service.
    pub fn templates(&self) -> TemplatesClient<Channel> {
        TemplatesClient::new(self.channel.clone())
    }

    /// The `Admin` service.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// The underlying channel, for other generated clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}
