//! Bearer tokens on gRPC services: a tonic interceptor that requires
//! `authorization: Bearer <token>` when a token is configured, and the rule every token
//! flag follows. Attach it per service (`FooServer::with_interceptor`), so health and
//! reflection stay open for probes and grpcurl's discovery.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use crate::ConfigError;

/// Interceptor that checks the bearer token; lets everything through when none is set.
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Arc<[u8]>>,
    /// What the token is called in the refusal ("API token"), so the caller knows which
    /// flag to look at. Never the token itself.
    what: &'static str,
}

impl std::fmt::Debug for RequireToken {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken")
            .field("what", &self.what)
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl RequireToken {
    /// Requires `token` when it is `Some`.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(t.as_bytes())),
            what: "token",
        }
    }

    /// Names the token in refusals: "wrong {what}".
    pub fn described_as(mut self, what: &'static str) -> Self {
        self.what = what;
        self
    }

    /// True when a token is required.
    pub fn is_enabled(&self) -> bool {
        self.expected.is_some()
    }
}

/// An interceptor requiring `token` when it is `Some` (see [`RequireToken`]).
pub fn require_token(token: Option<String>) -> RequireToken {
    RequireToken::new(token.as_deref())
}

/// Checks a token flag: at least 16 characters, no whitespace or control characters
/// (it travels in an HTTP header). The error names `setting`, never the value.
pub fn validate_token(setting: &'static str, token: Option<&str>) -> Result<(), ConfigError> {
    match token {
        Some(t) if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err(ConfigError::new(
                setting,
                "must be at least 16 characters without spaces or control characters",
            ))
        }
        _ => Ok(()),
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
            Err(Status::unauthenticated(format!("wrong {}", self.what)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: Option<&str>, header: Option<&str>) -> Result<(), (tonic::Code, String)> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        RequireToken::new(token)
            .described_as("API token")
            .call(req)
            .map(|_| ())
            .map_err(|s| (s.code(), s.message().to_owned()))
    }

    #[test]
    fn checks() {
        let t = Some("0123456789abcdef");
        let refused = |r: Result<(), (tonic::Code, String)>| {
            let (code, message) = r.unwrap_err();
            assert_eq!(code, tonic::Code::Unauthenticated);
            assert!(!message.contains("0123"), "{message}");
            message
        };
        assert_eq!(call(None, None), Ok(()));
        assert!(refused(call(t, None)).contains("authorization"));
        assert_eq!(
            refused(call(t, Some("Bearer 0123456789abcdeX"))),
            "wrong API token"
        );
        refused(call(t, Some("Bearer 0123456789abcdef0")));
        refused(call(t, Some("Bearer 0123456789abcde")));
        refused(call(t, Some("Basic 0123456789abcdef")));
        refused(call(t, Some("0123456789abcdef")));
        assert_eq!(call(t, Some("Bearer 0123456789abcdef")), Ok(()));
        assert_eq!(call(t, Some("bearer 0123456789abcdef")), Ok(()));
        assert!(!format!("{:?}", RequireToken::new(t)).contains("0123"));
        assert!(require_token(t.map(str::to_owned)).is_enabled());
        assert!(!require_token(None).is_enabled());
    }

    #[test]
    fn token_rule() {
        let s = "--auth-token (REDIS_SYNC_AUTH_TOKEN)";
        assert!(validate_token(s, None).is_ok());
        assert!(validate_token(s, Some("0123456789abcdef")).is_ok());
        for bad in ["short", "0123456789 abcdef", "0123456789abcdef\n", ""] {
            let e = validate_token(s, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("--auth-token"), "{e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }
}
