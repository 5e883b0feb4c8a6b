use super::*;

fn result(exit_code: i32) -> reapi::ActionResult {
    reapi::ActionResult {
        exit_code,
        ..Default::default()
    }
}

#[test]
fn a_cache_hit_says_so_with_an_ok_status() {
    let r = cache_hit(result(0));
    assert!(r.cached_result);
    assert_eq!(r.status.unwrap().code, 0);
    assert_eq!(r.result.unwrap().exit_code, 0);
}

#[test]
fn a_timed_out_run_keeps_its_result_under_deadline_exceeded() {
    let timeout = Duration::from_secs(3);
    let r = ran_here(result(137), true, timeout, 1 << 20, &[]);
    let status = r.status.clone().unwrap();
    assert_eq!(status.code, tonic::Code::DeadlineExceeded as i32);
    assert!(status.message.contains("3s"), "{}", status.message);
    assert_eq!(r.result.as_ref().unwrap().exit_code, 137);
    assert!(!r.cached_result);
    assert_eq!(outcome_of(&r), "timed_out");
}

#[test]
fn a_run_in_time_has_an_ok_status_and_names_its_warnings() {
    let warnings = ["lre-memory-max is not enforced".to_owned()];
    let r = ran_here(result(1), false, Duration::from_secs(3), 1 << 20, &warnings);
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    assert!(r.message.contains("lre-memory-max"), "{}", r.message);
    assert_eq!(outcome_of(&r), "failed");
    let r = ran_here(result(0), false, Duration::from_secs(3), 1 << 20, &[]);
    assert_eq!(outcome_of(&r), "succeeded");
    assert_eq!(outcome_of(&cache_hit(result(1))), "cached");
}

#[test]
fn a_response_without_a_result_is_counted_failed() {
    assert_eq!(outcome_of(&failed(&Error::Cancelled)), "failed");
    let r = failed(&Error::Cancelled);
    assert_eq!(r.status.unwrap().code, tonic::Code::Cancelled as i32);
    assert_eq!(r.message, Error::Cancelled.to_string());
}

#[test]
fn every_cancel_reason_is_named() {
    let reasons = [
        CancelReason::Submitter,
        CancelReason::Trusted,
        CancelReason::Unwatched,
        CancelReason::Shutdown,
    ];
    let names: std::collections::BTreeSet<_> =
        reasons.into_iter().map(|r| cancelled_by(Some(r))).collect();
    assert_eq!(names.len(), 4);
    assert!(!names.contains(""));
    assert_eq!(cancelled_by(None), "");
}
