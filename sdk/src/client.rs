//! A connection to the brokers: authentication, TLS, retries, leader redirects and a
//! list of brokers to move through when one cannot be reached.

use std::{
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
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
    route::{At, Failure, Next, Route},
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

/// How to reach the brokers; see [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    /// The broker URLs as given, checked by `build` and `connect`.
    brokers: Vec<String>,
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
        let endpoints = self.endpoints()?;
        let channels = endpoints.iter().map(Endpoint::connect_lazy).collect();
        self.finish(channels, 0)
    }

    /// Checks the settings and dials the brokers in the order given until one answers, so
    /// a wrong address fails here with a clear error. The client starts at the first
    /// broker that could be dialled; a connection re-dials by itself if it drops later.
    pub async fn connect(self) -> Result<Client> {
        let endpoints = self.endpoints()?;
        let mut reasons = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    let mut channel = Some(channel);
                    let channels = endpoints
                        .iter()
                        .enumerate()
                        .map(|(j, e)| match channel.take_if(|_| j == i) {
                            Some(c) => c,
                            None => e.connect_lazy(),
                        })
                        .collect();
                    return self.finish(channels, i);
                }
                Err(e) => reasons.push(crate::error::report(&e)),
            }
        }
        let reason = match reasons.as_slice() {
            [one] => one.clone(),
            _ => self
                .brokers
                .iter()
                .zip(&reasons)
                .map(|(url, reason)| format!("{url}: {reason}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        Err(Error::Connect {
            url: self.brokers.join(","),
            reason,
        })
    }

    fn finish(self, listed: Vec<Channel>, start: usize) -> Result<Client> {
        let auth = match &self.token {
            None => Auth(None),
            Some(t) => Auth(Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::InvalidToken)?,
            )),
        };
        let mut route = Route::new(self.brokers.clone());
        if start > 0 {
            route.start_at(start, Instant::now());
        }
        Ok(Client {
            inner: Arc::new(Inner {
                settings: self,
                auth,
                routing: Mutex::new(Routing {
                    route,
                    listed,
                    named: None,
                }),
            }),
        })
    }

    /// One endpoint per listed broker, each URL checked; an error names the bad one.
    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let given = self.brokers.join(",");
        if self.brokers.iter().all(|u| u.is_empty()) {
            return Err(Error::InvalidUrl {
                url: given,
                reason: "no broker URL given (such as http://127.0.0.1:7700)".into(),
            });
        }
        if self.brokers.iter().any(|u| u.is_empty()) {
            return Err(Error::InvalidUrl {
                url: given,
                reason: "the list has an empty entry; separate broker URLs with single commas"
                    .into(),
            });
        }
        self.brokers.iter().map(|url| self.endpoint(url)).collect()
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
    routing: Mutex<Routing>,
}

/// The broker in use and a channel to each broker the client may use.
struct Routing {
    route: Route,
    /// One channel per listed broker, in list order. Each dials on first use and
    /// re-dials by itself after its connection drops.
    listed: Vec<Channel>,
    /// The channel to a leader a standby named that is not in the list, with its URL.
    named: Option<(String, Channel)>,
}

impl Routing {
    fn channel(&self) -> Channel {
        match self.route.at() {
            At::Listed(i) => self.listed[*i].clone(),
            At::Named(url) => match &self.named {
                Some((named, channel)) if named == url => channel.clone(),
                // `Client::failed` makes the channel whenever the route moves to a named
                // leader, from the same status.
                _ => unreachable!("no channel for the named leader {url}"),
            },
        }
    }
}

/// A connection to a Hearth cluster: one broker, or a list of them to move through when
/// one cannot be reached. Cheap to clone; clones share the connections and the choice of
/// broker.
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
            .field("brokers", &self.inner.settings.brokers)
            .field("url", &self.url())
            .field(
                "token",
                &self.inner.settings.token.as_ref().map(|_| "<set>"),
            )
            .field("tls", &self.inner.settings.tls.is_some())
            .finish()
    }
}

impl Client {
    /// Settings for a broker such as `http://127.0.0.1:7700`, or for several, separated by
    /// commas (`https://a:7700,https://b:7700`), as `--broker` and `HEARTH_BROKER` take
    /// them. Finish with [`ClientBuilder::connect`] or [`ClientBuilder::build`]; either
    /// checks every URL and names a bad one.
    ///
    /// With several brokers the client uses one at a time. When it cannot dial the one in
    /// use (refused, timed out, a name that does not resolve) it moves to the next one in
    /// the list; a call that certainly did not reach a broker is retried there at once. A
    /// standby's answer makes it use the leader the standby names, and when that leader
    /// cannot be dialled as named (an address that only works inside the brokers'
    /// network) it goes back to its list. List every broker by an address this client can
    /// reach. A host name with several addresses works too: each dial tries them in turn.
    pub fn builder(brokers: impl Into<String>) -> ClientBuilder {
        let brokers: String = brokers.into();
        ClientBuilder {
            brokers: brokers.split(',').map(|u| u.trim().to_owned()).collect(),
            token: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// [`Client::builder`] for a list of broker URLs, such as one read from a config
    /// file: the same as giving them joined with commas.
    pub fn builder_many<I, S>(brokers: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let brokers: Vec<String> = brokers.into_iter().map(Into::into).collect();
        Self::builder(brokers.join(","))
    }

    /// Connects to a broker (or the first of a comma-separated list that answers) with
    /// default settings.
    pub async fn connect(brokers: impl Into<String>) -> Result<Self> {
        Self::builder(brokers).connect().await
    }

    /// The URL of the broker in use now: a listed one, or the leader a standby named.
    pub fn url(&self) -> String {
        self.routing().route.url().to_owned()
    }

    /// The broker URLs this client was built with, in order.
    pub fn brokers(&self) -> &[String] {
        &self.inner.settings.brokers
    }

    fn routing(&self) -> MutexGuard<'_, Routing> {
        self.inner.routing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self) -> Channel {
        self.routing().channel()
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

    /// Runs one idempotent unary call, retrying `UNAVAILABLE` under the client's policy,
    /// following a standby to the leader it names and moving to the next broker when one
    /// cannot be dialled. `rpc` names the call in errors.
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
        let mut waits = retry::Waits::default();
        loop {
            let generation = self.routing().route.generation();
            let status = match f(self.clone()).await {
                Ok(value) => {
                    self.routing().route.answered(generation);
                    return Ok(value);
                }
                Err(status) => status,
            };
            waits.failed(&status);
            let wait = match self.failed(generation, &status) {
                Next::Now => Duration::ZERO,
                Next::AfterBackoff => waits.next(&policy),
            };
            if !retry::retryable(kind, &status) || started.elapsed() + wait > policy.max_elapsed {
                return Err(Error::rpc(rpc)(status));
            }
            tracing::debug!(rpc, ?wait, error = %status.message(), "retrying");
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Takes in an attempt that failed with `status` and picks the broker for the next:
    /// the next listed one when this one could not be dialled, the leader a standby named.
    fn failed(&self, generation: u64, status: &tonic::Status) -> Next {
        let leader =
            retry::leader(status).and_then(|leader| match self.inner.settings.endpoint(&leader) {
                Ok(endpoint) => Some((leader, endpoint)),
                Err(e) => {
                    tracing::warn!(leader, error = %e, "cannot follow the named leader");
                    None
                }
            });
        let failure = if retry::never_sent(status) {
            Failure::Unreachable
        } else if let Some((leader, _)) = &leader {
            Failure::Redirect(leader)
        } else {
            Failure::Other
        };
        let mut routing = self.routing();
        let from = routing.route.url().to_owned();
        let next = routing.route.failed(generation, failure, Instant::now());
        let to = routing.route.url().to_owned();
        if to != from {
            // The route moves to a leader outside the list only as named in `status`.
            if let (At::Named(url), Some((_, endpoint))) = (routing.route.at(), &leader)
                && routing.named.as_ref().is_none_or(|(named, _)| named != url)
            {
                routing.named = Some((url.clone(), endpoint.connect_lazy()));
            }
            match failure {
                Failure::Redirect(_) => tracing::info!(from, to, "following the broker leader"),
                _ => {
                    tracing::info!(from, to, error = %status.message(), "broker unreachable; trying the next")
                }
            }
        }
        next
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

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(builder: ClientBuilder) -> (String, String) {
        match builder.build() {
            Err(Error::InvalidUrl { url, reason }) => (url, reason),
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_entry_of_a_list_is_checked_and_a_bad_one_is_named() {
        let client = Client::builder(" http://a:7700 , https://b:7700")
            .build()
            .unwrap();
        assert_eq!(client.brokers(), ["http://a:7700", "https://b:7700"]);
        assert_eq!(client.url(), "http://a:7700");
        let client = Client::builder_many(["http://a:7700", "http://b:7700"])
            .build()
            .unwrap();
        assert_eq!(client.brokers(), ["http://a:7700", "http://b:7700"]);

        let (url, reason) = invalid(Client::builder("http://a:7700,b:7700"));
        assert_eq!(url, "b:7700");
        assert!(reason.contains("http://"), "{reason}");
        let (url, reason) = invalid(Client::builder("http://a:7700,,http://b:7700"));
        assert_eq!(url, "http://a:7700,,http://b:7700");
        assert!(reason.contains("empty entry"), "{reason}");
        let (_, reason) = invalid(Client::builder(" "));
        assert!(reason.contains("no broker URL"), "{reason}");
    }

    /// What the route is told about a dial failure decides whether a turn is sent again,
    /// so check tonic's real errors, not hand-made ones.
    #[tokio::test]
    async fn a_refused_dial_and_a_name_that_does_not_resolve_never_sent_the_request() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        for url in [
            format!("http://127.0.0.1:{port}"),
            "http://unreachable.invalid:7700".to_owned(),
        ] {
            let client = Client::builder(url.clone())
                .retry(RetryPolicy::never())
                .build()
                .unwrap();
            let err = client.cluster_info().await.unwrap_err();
            let status = err.status().unwrap_or_else(|| panic!("{url}: {err}"));
            assert_eq!(status.code(), tonic::Code::Unavailable, "{url}: {err}");
            assert!(retry::never_sent(status), "{url}: {status:?}");
            assert!(crate::error::certainly_not_run(status), "{url}: {status:?}");
        }
    }

    /// A broker that cannot be dialled sends the next call to the next one.
    #[tokio::test]
    async fn a_dead_broker_sends_the_next_call_to_the_next_one() {
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .unwrap()
                    .port()
            })
            .collect();
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let client = Client::builder_many(urls.clone())
            .retry(RetryPolicy::never())
            .build()
            .unwrap();
        assert_eq!(client.url(), urls[0]);
        client.cluster_info().await.unwrap_err();
        assert_eq!(client.url(), urls[1]);
        client.cluster_info().await.unwrap_err();
        assert_eq!(client.url(), urls[0], "round the list again");
        let err = Client::builder(format!(
            "http://127.0.0.1:{},http://127.0.0.1:{}",
            ports[0], ports[1]
        ))
        .connect()
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("http://127.0.0.1:{}: ", ports[0]))
                && text.contains(&format!("http://127.0.0.1:{}: ", ports[1])),
            "the error names both brokers: {text}"
        );
    }
}
