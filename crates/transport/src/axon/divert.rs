//! One route, two protocols: a layer sending the requests another protocol claims to that
//! protocol's router.

use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::future::RouteFuture;
use tower::{Layer, Service};

/// Sends the requests `claims` accepts to `to` instead of the wrapped route.
#[derive(Clone)]
pub(super) struct Divert {
    claims: fn(&Request<Body>) -> bool,
    to: Router,
}

impl Divert {
    /// Requests `claims` accepts go to `to`.
    pub(super) fn new(claims: fn(&Request<Body>) -> bool, to: Router) -> Divert {
        Divert { claims, to }
    }
}

impl<S> Layer<S> for Divert {
    type Service = Diverted<S>;

    fn layer(&self, inner: S) -> Diverted<S> {
        Diverted {
            inner,
            divert: self.clone(),
        }
    }
}

/// The service of [`Divert`].
#[derive(Clone)]
pub(super) struct Diverted<S> {
    inner: S,
    divert: Divert,
}

impl<S> Service<Request<Body>> for Diverted<S>
where
    S: Service<
            Request<Body>,
            Response = axum::response::Response,
            Future = RouteFuture<std::convert::Infallible>,
            Error = std::convert::Infallible,
        >,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = RouteFuture<std::convert::Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if (self.divert.claims)(&request) {
            self.divert.to.call(request)
        } else {
            self.inner.call(request)
        }
    }
}
