//! Runs the auth service's handlers directly (no gRPC server in front) over a fresh SQLite
//! database, with a stand-in admin service on a local port answering its internal RPCs.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::sync::Arc;

use steward_auth::state::State;
use steward_proto::admin::v1 as admin;
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::admin_internal_service_server::{
    AdminInternalService, AdminInternalServiceServer,
};
use steward_runtime::authn::{Caller, Principal, RequestContext, ServiceCredential};
use steward_runtime::claims::{AccessClaims, TokenScope};
use steward_runtime::config::Config;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// Answers Lookup and Activate for any administrator: an active Administrator with billing.
struct FakeAdmin;

fn administrator(name: String) -> admin::Administrator {
    admin::Administrator {
        name,
        email: "someone@example.com".into(),
        role: admin::Role::Administrator as i32,
        billing: true,
        state: admin::administrator::State::Active as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AdminInternalService for FakeAdmin {
    async fn lookup_administrator(
        &self,
        request: Request<admin::LookupAdministratorRequest>,
    ) -> Result<Response<admin::LookupAdministratorResponse>, Status> {
        Ok(Response::new(admin::LookupAdministratorResponse {
            administrator: Some(administrator(request.into_inner().name)),
            organization_display_name: "Acme".into(),
            role_permissions: Vec::new(),
            // This stand-in admin service waits nothing after writes, so it lends no lease.
            caller_lease_ms: 0,
        }))
    }

    async fn activate_administrator(
        &self,
        request: Request<admin::ActivateAdministratorRequest>,
    ) -> Result<Response<admin::ActivateAdministratorResponse>, Status> {
        Ok(Response::new(admin::ActivateAdministratorResponse {
            administrator: Some(administrator(request.into_inner().name)),
        }))
    }

    async fn record_audit_events(
        &self,
        request: Request<admin::RecordAuditEventsRequest>,
    ) -> Result<Response<admin::RecordAuditEventsResponse>, Status> {
        let count = request.into_inner().events.len() as i32;
        Ok(Response::new(admin::RecordAuditEventsResponse { recorded_count: count }))
    }

    async fn verify_api_key(
        &self,
        _request: Request<admin::VerifyApiKeyRequest>,
    ) -> Result<Response<admin::VerifyApiKeyResponse>, Status> {
        Err(Status::unauthenticated("invalid credentials"))
    }

    async fn lookup_service_account(
        &self,
        request: Request<admin::LookupServiceAccountRequest>,
    ) -> Result<Response<admin::LookupServiceAccountResponse>, Status> {
        Err(Status::not_found(request.into_inner().name))
    }
}

/// A running auth service (its state) with its temporary directory.
pub struct Harness {
    pub state: Arc<State>,
    pub dir: tempfile::TempDir,
}

pub async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = steward_storage::sqlite_url(dir.path(), "auth").unwrap();
    let db = steward_storage::connect(&url, 4).await.unwrap();
    steward_storage::migrate::<steward_auth::Migrator>(&db).await.unwrap();
    let mut config = Config::default();
    config.database.data_dir = dir.path().to_path_buf();
    config.auth.signing_keys =
        vec![steward_auth::keys::ensure_dev_signing_key(dir.path()).unwrap()];
    config.auth.mfa_keys = vec![steward_auth::sealed::ensure_dev_mfa_key(dir.path()).unwrap()];

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminInternalServiceServer::new(FakeAdmin))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let credential = ServiceCredential::new("a-test-service-credential-of-32-chars").unwrap();

    let keys = steward_auth::keys::load_all(&config.auth).unwrap();
    let state = Arc::new(State {
        refreshes: steward_auth::rotation::Refreshes::new(
            &db,
            steward_runtime::service::system_clock(),
        ),
        db,
        clock: steward_runtime::service::system_clock(),
        config: config.auth.clone(),
        signer: steward_auth::jwt::Signer::new(keys, &config.auth).unwrap(),
        hasher: steward_auth::password::Hasher::new(2, 64).await.unwrap(),
        mailer: steward_auth::mailer::Mailer::from_config(&config).unwrap(),
        sealer: steward_auth::sealed::Sealer::load(&config.auth).unwrap(),
        admin: AdminInternalServiceClient::new(InterceptedService::new(channel, credential)),
        looked_up: steward_runtime::lease::Leases::new(config.internal.caller_lease()),
    });
    // Invites and reset emails leave through the mail outbox, as in the service.
    steward_auth::mail_queue::OUTBOX.spawn_relay(
        state.db.clone(),
        steward_auth::mail_queue::deliver(state.clone()),
        steward_runtime::service::system_clock(),
    );
    Harness { state, dir }
}

/// Waits (up to 5 s) for a first mail to `email` and returns its link token.
pub async fn wait_for_mail(harness: &Harness, email: &str) -> String {
    for _ in 0..100 {
        let mailed = std::fs::read_dir(harness.dir.path().join("mail")).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&format!("To: {email}")))
            })
        });
        if mailed {
            return mailed_token(harness, email);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no mail to {email}")
}

/// A request as the authentication layer would pass it on.
pub fn request<T>(message: T, caller: Caller) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(RequestContext {
        request_id: "test".into(),
        client_address: "192.0.2.7:40000".into(),
        method: String::new(),
    });
    request
}

/// The caller an access token stands for (the layer's job, done here without checks).
pub fn caller_of(access_token: &str) -> Caller {
    use base64::Engine;
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    let claims: AccessClaims = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(claims.scope, TokenScope::Full);
    Caller::Administrator(Principal::from_claims(claims))
}

/// The newest `token=` value mailed to `email`.
pub fn mailed_token(harness: &Harness, email: &str) -> String {
    let mut newest: Option<(std::time::SystemTime, String)> = None;
    for entry in std::fs::read_dir(harness.dir.path().join("mail")).unwrap().flatten() {
        if entry.path().extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        if !text.contains(&format!("To: {email}")) {
            continue;
        }
        let start = text.find("token=").unwrap() + "token=".len();
        let token: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let modified = entry.metadata().unwrap().modified().unwrap();
        if newest.as_ref().is_none_or(|(t, _)| modified >= *t) {
            newest = Some((modified, token));
        }
    }
    newest.expect("a mailed link").1
}
