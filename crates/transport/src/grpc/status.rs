//! Pipeline errors as gRPC statuses.

use prompting_miner::MinerError;
use tonic::{Code, Status};

/// The gRPC code of a pipeline error: 400 → `InvalidArgument`, 403 → `PermissionDenied`,
/// 408 → `DeadlineExceeded`, 500 → `Internal`, 503 → `ResourceExhausted`.
pub fn code_of(error: &MinerError) -> Code {
    match error {
        MinerError::BadRequest(_) => Code::InvalidArgument,
        MinerError::Blacklisted(_) => Code::PermissionDenied,
        MinerError::Timeout(_) => Code::DeadlineExceeded,
        MinerError::Backend(_) => Code::Internal,
        MinerError::Overloaded(_) => Code::ResourceExhausted,
    }
}

/// The status answering a pipeline error: [`code_of`] with the error's message (every
/// [`MinerError`] message is safe to show the caller).
pub fn status_of(error: &MinerError) -> Status {
    Status::new(code_of(error), error.to_string())
}

/// The HTTP status a gRPC code stands for in the transport metrics (the inverse of
/// [`code_of`], plus `OK` → 200, `UNAUTHENTICATED` → 401, and 400/500 for other failures).
pub(crate) fn http_status_of(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::Unimplemented => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::DeadlineExceeded => 408,
        Code::ResourceExhausted => 503,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_http_statuses() {
        let cases = [
            (MinerError::BadRequest("x".into()), Code::InvalidArgument),
            (MinerError::Blacklisted("x".into()), Code::PermissionDenied),
            (MinerError::Timeout(1.0), Code::DeadlineExceeded),
            (MinerError::Backend("x".into()), Code::Internal),
            (MinerError::Overloaded("x".into()), Code::ResourceExhausted),
        ];
        for (error, code) in cases {
            let expected_http = match code {
                Code::InvalidArgument => 400,
                Code::PermissionDenied => 403,
                Code::DeadlineExceeded => 408,
                Code::Internal => 500,
                _ => 503,
            };
            assert_eq!(error.status_code(), expected_http, "{error:?}");
            let status = status_of(&error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), error.to_string());
            assert_eq!(http_status_of(code), expected_http);
        }
    }
}
