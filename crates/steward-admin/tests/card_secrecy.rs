//! The full card number and the CVC reach neither the logs (captured at TRACE level, every
//! target) nor the database file, even when the card is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use steward_admin::api::billing::BillingApi;
use steward_admin::api::internal::InternalApi;
use steward_admin::api::organization::OrganizationApi;
use steward_admin::state::State;
use steward_proto::admin::v1::admin_internal_service_server::AdminInternalService;
use steward_proto::admin::v1::organization_service_server::OrganizationService;
use steward_proto::admin::v1::{
    ActivateAdministratorRequest, CreateOrganizationRequest, Organization,
};
use steward_proto::billing::v1::billing_service_server::BillingService;
use steward_proto::billing::v1::{GetPaymentCardRequest, PaymentCard, UpdatePaymentCardRequest};
use steward_runtime::authn::{Caller, Principal};
use steward_runtime::claims::{Role, TokenScope};

const NUMBER: &str = "4111 1111 1111 1111";
const DIGITS: &str = "4111111111111111";
const CVC: &str = "worthless-cvc-0427";
const GOOD_CVC: &str = "427";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn request<T>(message: T, caller: Caller) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller);
    request
}

#[tokio::test]
async fn card_number_and_cvc_are_never_logged_or_stored() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let url = steward_storage::sqlite_url(dir.path(), "admin").unwrap();
    let db = steward_storage::connect(&url, 4).await.unwrap();
    steward_storage::migrate::<steward_admin::Migrator>(&db).await.unwrap();
    let state = Arc::new(State::new(
        db.clone(),
        steward_runtime::service::system_clock(),
        chrono::Duration::hours(72),
        steward_runtime::service::Peers::from_config(&Default::default()).unwrap(),
        std::time::Duration::from_millis(100),
    ));

    let created = OrganizationApi::new(state.clone())
        .create_organization(request(
            CreateOrganizationRequest {
                organization: Some(Organization {
                    display_name: "Acme".into(),
                    ..Default::default()
                }),
                owner_email: "owner@example.com".into(),
                request_id: String::new(),
            },
            Caller::Service,
        ))
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().name;
    let owner = created.owner.unwrap().name;
    InternalApi::new(state.clone())
        .activate_administrator(request(
            ActivateAdministratorRequest { name: owner.clone() },
            Caller::Service,
        ))
        .await
        .unwrap();
    let principal = Principal {
        organization: org.clone(),
        administrator: owner.clone(),
        role: Role::Administrator,
        billing: true,
        permissions: steward_runtime::roles::built_in(Role::Administrator).with_billing(true),
        session: "session".into(),
        scope: TokenScope::Full,
        auth_time: chrono::Utc::now().timestamp(),
        client_id: String::new(),
    };
    let billing = BillingApi::new(state.clone());
    let card = |cvc: &str| PaymentCard {
        name: format!("{org}/paymentCard"),
        card_number: NUMBER.into(),
        cvc: cvc.into(),
        exp_month: 12,
        exp_year: chrono::Datelike::year(&chrono::Utc::now()) + 3,
        ..Default::default()
    };
    let bad_cvc = billing
        .update_payment_card(request(
            UpdatePaymentCardRequest { payment_card: Some(card(CVC)), update_mask: None },
            Caller::Administrator(principal.clone()),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_cvc.code(), tonic::Code::InvalidArgument);
    assert!(!bad_cvc.message().contains(CVC));
    let stored = billing
        .update_payment_card(request(
            UpdatePaymentCardRequest { payment_card: Some(card(GOOD_CVC)), update_mask: None },
            Caller::Administrator(principal.clone()),
        ))
        .await
        .unwrap()
        .into_inner()
        .payment_card
        .unwrap();
    assert_eq!(stored.last4, "1111");
    billing
        .get_payment_card(request(
            GetPaymentCardRequest { name: format!("{org}/paymentCard") },
            Caller::Administrator(principal),
        ))
        .await
        .unwrap();
    db.close().await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("payment card updated"), "the capture works: {logs}");
    for needle in [DIGITS, NUMBER, CVC, &format!("\"{GOOD_CVC}\"")] {
        assert!(!logs.contains(needle), "{needle} logged");
    }
    // SQLite may still be removing its -wal/-shm files after close; a file gone by the time it is
    // read holds nothing. The database file itself must be among those read.
    let mut read = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("{}: {err}", path.display()),
        };
        read.push(path.file_name().unwrap().to_string_lossy().to_string());
        for needle in [DIGITS, NUMBER, CVC] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} stored"
            );
        }
    }
    assert!(read.iter().any(|f| f.ends_with(".db")), "the database file was scanned: {read:?}");
}
