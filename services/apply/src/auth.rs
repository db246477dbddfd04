//! The API token: when `--api-token` is set, TaskService callers must send
//! `authorization: Bearer <token>`. Health and reflection stay open so probes and
//! grpcurl's discovery work without it.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

/// Interceptor that checks the bearer token; lets everything through when none is set.
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for RequireToken {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl RequireToken {
    /// Requires `token` when it is `Some`.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(t.as_bytes())),
        }
    }
}

/// Compares in time that depends only on the length of `expected`, so the answer time
/// does not tell an attacker how many leading bytes were right.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing \"authorization: Bearer <token>\""))?;
        let given = given.as_bytes();
        // The scheme is case-insensitive (RFC 7235).
        let token = match given.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &given[7..],
            _ => {
                return Err(Status::unauthenticated(
                    "authorization must be \"Bearer <token>\"",
                ));
            }
        };
        if constant_time_eq(expected, token) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("wrong API token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: Option<&str>, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        RequireToken::new(token)
            .call(req)
            .map(|_| ())
            .map_err(|s| s.code())
    }

    #[test]
    fn checks() {
        let t = Some("0123456789abcdef");
        assert_eq!(call(None, None), Ok(()));
        assert_eq!(call(t, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            call(t, Some("Bearer 0123456789abcdeX")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(t, Some("Bearer 0123456789abcdef0")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(t, Some("Basic 0123456789abcdef")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(t, Some("Bearer 0123456789abcdef")), Ok(()));
        assert_eq!(call(t, Some("bearer 0123456789abcdef")), Ok(()));
        assert!(!format!("{:?}", RequireToken::new(t)).contains("0123"));
    }
}
