//! A connection to a broker: authentication, TLS, retries and leader redirects.

use std::{
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    error::{Error, Result},
    proto::v1::{
        self, CreateSessionRequest, GetSessionRequest, ListSessionsRequest, SessionSpec,
        admin_client::AdminClient, create_session_request::Source, sessions_client::SessionsClient,
        templates_client::TemplatesClient,
    },
    retry::{self, Kind, RetryPolicy},
    session::Session,
};

/// The largest message the client sends or accepts: the broker's limit for turn payloads.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A generated client whose calls carry the token, if one is set.
pub type Authed = InterceptedService<Channel, Auth>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// How to reach a broker; see [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this CA (PEM) for the broker's certificate instead of the system roots.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.ca_certificate(Certificate::from_pem(pem)));
        self
    }

    /// Presents this certificate and key (PEM) to the broker (mutual TLS).
    pub fn identity_pem(mut self, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.identity(Identity::from_pem(cert, key)));
        self
    }

    /// Expects this name in the broker's certificate instead of the URL's host.
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.domain_name(name));
        self
    }

    /// Gives up dialling after this long (default 5 s). Retries may dial again.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Replaces the retry policy (see [`RetryPolicy`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Checks the settings and returns a client that dials on first use, so a broker that
    /// is down now does not fail this call; calls retry until it answers.
    pub fn build(self) -> Result<Client> {
        let channel = self.endpoint(&self.url)?.connect_lazy();
        self.finish(channel)
    }

    /// Checks the settings and dials the broker once, so a wrong address fails here with a
    /// clear error. The connection re-dials by itself if it drops later.
    pub async fn connect(self) -> Result<Client> {
        let channel = self
            .endpoint(&self.url)?
            .connect()
            .await
            .map_err(|e| Error::Connect {
                url: self.url.clone(),
                reason: crate::error::report(&e),
            })?;
        self.finish(channel)
    }

    fn finish(self, channel: Channel) -> Result<Client> {
        let auth = match &self.token {
            None => Auth(None),
            Some(t) => Auth(Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::InvalidToken)?,
            )),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                settings: self,
                auth,
                channel: RwLock::new(channel),
            }),
        })
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "it must start with http:// or https:// (such as http://127.0.0.1:7700)".into(),
            ));
        }
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let tls = match (&self.tls, url.starts_with("https://")) {
            (Some(tls), _) => Some(tls.clone()),
            (None, true) => Some(ClientTlsConfig::new().with_native_roots()),
            (None, false) => None,
        };
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|source| Error::Tls {
                url: url.to_owned(),
                source,
            })?;
        }
        Ok(endpoint)
    }
}

struct Inner {
    settings: ClientBuilder,
    auth: Auth,
    /// The broker in use: the one given, or the leader a standby pointed to.
    channel: RwLock<Channel>,
}

/// A connection to a Hearth broker. Cheap to clone; clones share the connection.
///
/// ```no_run
/// # async fn demo() -> hearth_sdk::Result<()> {
/// use hearth_sdk::{Client, proto::v1::SessionSpec};
///
/// let client = Client::connect("http://127.0.0.1:7700").await?;
/// let session = client
///     .create(SessionSpec { image: "my-model:latest".into(), ..Default::default() })
///     .await?;
/// let out = session.exec(["echo", "hello"]).await?;
/// assert_eq!(out.stdout, b"hello\n");
/// session.delete().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.settings.url)
            .field(
                "token",
                &self.inner.settings.token.as_ref().map(|_| "<set>"),
            )
            .field("tls", &self.inner.settings.tls.is_some())
            .finish()
    }
}

impl Client {
    /// Settings for a broker such as `http://127.0.0.1:7700`; finish with
    /// [`ClientBuilder::connect`] or [`ClientBuilder::build`].
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// Connects to a broker with default settings and checks that it answers.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// The broker URL this client was built with.
    pub fn url(&self) -> &str {
        &self.inner.settings.url
    }

    fn channel(&self) -> Channel {
        self.inner
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel(), self.inner.auth.clone())
    }

    /// The generated `Sessions` client, with this client's token. It does not retry.
    pub fn sessions(&self) -> SessionsClient<Authed> {
        SessionsClient::new(self.authed())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The generated `Templates` client, with this client's token. It does not retry.
    pub fn templates(&self) -> TemplatesClient<Authed> {
        TemplatesClient::new(self.authed())
    }

    /// The generated `Admin` client, with this client's token. It does not retry.
    pub fn admin(&self) -> AdminClient<Authed> {
        AdminClient::new(self.authed())
    }

    /// Runs one idempotent unary call, retrying `UNAVAILABLE` under the client's policy
    /// and following a standby to the leader it names. `rpc` names the call in errors.
    ///
    /// ```no_run
    /// # async fn demo(client: hearth_sdk::Client) -> hearth_sdk::Result<()> {
    /// use hearth_sdk::proto::v1::ListNodesRequest;
    /// let nodes = client
    ///     .call("Admin/ListNodes", |c| async move {
    ///         c.admin().list_nodes(ListNodesRequest::default()).await
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<T, F, Fut>(&self, rpc: &'static str, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.retrying(rpc, Kind::Unary, f)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The retry loop behind every call.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        rpc: &'static str,
        kind: Kind,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let policy = self.inner.settings.retry;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let status = match f(self.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let wait = policy.backoff(attempt);
            if !retry::retryable(kind, &status) || started.elapsed() + wait > policy.max_elapsed {
                return Err(Error::rpc(rpc)(status));
            }
            if let Some(leader) = retry::leader(&status) {
                self.follow(&leader);
            }
            tracing::debug!(rpc, attempt, ?wait, error = %status.message(), "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Switches to the leader a standby named, unless it cannot be dialled as given.
    fn follow(&self, leader: &str) {
        match self.inner.settings.endpoint(leader) {
            Ok(endpoint) => {
                let channel = endpoint.connect_lazy();
                tracing::info!(leader, "following the broker leader");
                *self
                    .inner
                    .channel
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = channel;
            }
            Err(e) => tracing::warn!(leader, error = %e, "cannot follow the named leader"),
        }
    }

    /// Leader, epoch, store and counts; also a cheap way to check the broker answers.
    pub async fn cluster_info(&self) -> Result<v1::ClusterInfo> {
        self.call("Admin/GetClusterInfo", |c| async move {
            c.admin()
                .get_cluster_info(v1::GetClusterInfoRequest {})
                .await
        })
        .await
    }

    /// Starts a session from a full spec; await it to get a READY [`Session`].
    pub fn create(&self, spec: SessionSpec) -> Create {
        Create::new(self.clone(), Source::Spec(spec))
    }

    /// Starts a session from a template, claiming a warm one when the pool has one.
    pub fn create_from_template(&self, template: impl Into<String>) -> Create {
        Create::new(self.clone(), Source::Template(template.into()))
    }

    /// A handle on an existing session, keeping it alive while the handle lives.
    pub async fn attach(&self, id: impl Into<String>) -> Result<Session> {
        let info = self.get_session(id).await?;
        Ok(Session::new(self.clone(), info))
    }

    /// One session of the caller's tenant.
    pub async fn get_session(&self, id: impl Into<String>) -> Result<v1::Session> {
        let request = GetSessionRequest { id: id.into() };
        self.call("Sessions/GetSession", |c| {
            let request = request.clone();
            async move { c.sessions().get_session(request).await }
        })
        .await
    }

    /// Every session of the caller's tenant that matches `filter`, all pages.
    pub async fn list_sessions(&self, filter: ListSessionsRequest) -> Result<Vec<v1::Session>> {
        let mut sessions = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListSessionsRequest {
                page_token: page_token.clone(),
                ..filter.clone()
            };
            let page = self
                .call("Sessions/ListSessions", |c| {
                    let request = request.clone();
                    async move { c.sessions().list_sessions(request).await }
                })
                .await?;
            sessions.extend(page.sessions);
            if page.next_page_token.is_empty() {
                return Ok(sessions);
            }
            page_token = page.next_page_token;
        }
    }
}

/// A pending `CreateSession`; set options, then `.await` it.
///
/// The request carries a `request_id` (a fresh ULID unless one is set), and retries send
/// the same one, so a create that is retried across a timeout or a leader failover still
/// gives one session.
#[must_use = "a create does nothing until it is awaited"]
pub struct Create {
    client: Client,
    request: CreateSessionRequest,
    keep_alive: bool,
}

impl Create {
    fn new(client: Client, source: Source) -> Self {
        Self {
            client,
            request: CreateSessionRequest {
                source: Some(source),
                request_id: ulid::Ulid::new().to_string(),
                labels: Default::default(),
                no_wait: false,
            },
            keep_alive: true,
        }
    }

    /// Adds a label to the session.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.labels.insert(key.into(), value.into());
        self
    }

    /// Uses this idempotency key instead of a generated one, for retries across
    /// process restarts of the caller.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request.request_id = id.into();
        self
    }

    /// Returns as soon as the session is placed, before it is READY.
    pub fn no_wait(mut self) -> Self {
        self.request.no_wait = true;
        self
    }

    /// Does not send keep-alives from the returned handle; the session then idles out
    /// by its own `idle_timeout` unless turns keep it busy.
    pub fn without_keep_alive(mut self) -> Self {
        self.keep_alive = false;
        self
    }

    async fn send(self) -> Result<Session> {
        let request = self.request;
        let info = self
            .client
            .call("Sessions/CreateSession", |c| {
                let request = request.clone();
                async move { c.sessions().create_session(request).await }
            })
            .await?;
        let session = Session::new(self.client, info);
        if !self.keep_alive {
            session.stop_keep_alive();
        }
        Ok(session)
    }
}

impl IntoFuture for Create {
    type Output = Result<Session>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
