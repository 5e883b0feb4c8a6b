//! The trust decisions of the ActionCache service: a trusted caller's
//! UpdateActionResult is everyone's, an untrusted caller's stays in its
//! private view (or is refused), and nobody else sees it.

use tonic::Code;

use super::{Harness, as_caller, proto, user};
use crate::digest::Digest;
use crate::proto::reapi;
use crate::proto::reapi::action_cache_server::ActionCache as _;
use crate::service::action_cache::ActionCacheService;

fn update(action: &Digest, exit_code: i32) -> reapi::UpdateActionResultRequest {
    reapi::UpdateActionResultRequest {
        action_digest: proto(action),
        action_result: Some(reapi::ActionResult {
            exit_code,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn get(action: &Digest) -> reapi::GetActionResultRequest {
    reapi::GetActionResultRequest {
        action_digest: proto(action),
        ..Default::default()
    }
}

async fn lookup(svc: &ActionCacheService, uid: u32, action: &Digest) -> Result<i32, Code> {
    svc.get_action_result(as_caller(&user(uid, false), get(action)))
        .await
        .map(|r| r.into_inner().exit_code)
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_write_is_seen_by_its_writer_alone() {
    let h = Harness::new("");
    let svc = ActionCacheService::new(h.ctx.clone());
    let action = Digest::of_bytes(b"action written by uid 2001");
    svc.update_action_result(as_caller(&user(2001, false), update(&action, 7)))
        .await
        .unwrap();
    assert_eq!(
        lookup(&svc, 2001, &action).await,
        Ok(7),
        "its writer sees it"
    );
    assert_eq!(
        lookup(&svc, 2002, &action).await,
        Err(Code::NotFound),
        "another user must not get a result it cannot trust"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_write_is_shared_with_everyone() {
    let h = Harness::new("");
    let svc = ActionCacheService::new(h.ctx.clone());
    let action = Digest::of_bytes(b"action written by a trusted user");
    svc.update_action_result(as_caller(&user(0, true), update(&action, 3)))
        .await
        .unwrap();
    assert_eq!(lookup(&svc, 2001, &action).await, Ok(3));
    assert_eq!(lookup(&svc, 2002, &action).await, Ok(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_writes_can_be_refused_and_anonymous_ones_always_are() {
    let h = Harness::new("untrusted-action-cache-writes = \"deny\"\n");
    let svc = ActionCacheService::new(h.ctx.clone());
    let action = Digest::of_bytes(b"refused");
    let err = svc
        .update_action_result(as_caller(&user(2001, false), update(&action, 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(lookup(&svc, 2001, &action).await, Err(Code::NotFound));

    let h = Harness::new("");
    let svc = ActionCacheService::new(h.ctx.clone());
    let anonymous = crate::trust::Caller {
        uid: None,
        name: None,
        trusted: false,
    };
    let err = svc
        .update_action_result(as_caller(&anonymous, update(&action, 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_was_not_admitted_is_an_internal_error() {
    let h = Harness::new("");
    let svc = ActionCacheService::new(h.ctx.clone());
    let action = Digest::of_bytes(b"no caller");
    let err = svc
        .update_action_result(tonic::Request::new(update(&action, 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
}
