//! HTTP/1 upgrades: the WebSocket handshake is answered by the app, then the socket leaves
//! actix-http.
//!
//! actix-http hands every request that asks for an upgrade to this service, together with its
//! connection. The app answers it like any other request (routes, request limits, origin and
//! auth checks, the handshake itself), so there is one place for all of that. When the answer
//! is a WebSocket accept carrying a [`ws::Accepted`], the 101 is written and the socket goes to
//! that connection alone: actix-http's per-connection read and write buffers (8 KiB each) are
//! freed, which is most of what an idle WebSocket would otherwise cost. Any other answer is
//! written, and the connection closed.

use std::io;
use std::rc::Rc;

use actix_codec::{Framed, FramedParts};
use actix_http::body::{self, BodySize, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, StatusCode};
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::rt::net::TcpStream;
use futures_util::future::LocalBoxFuture;
use futures_util::SinkExt;

use super::{json_error, ws};

/// What actix-http hands over: the request and its connection, with what was read past it.
pub type Upgrade = (Request, Framed<TcpStream, Codec>);

/// The upgrade service for one worker, over its own instance of the app that `make_app` builds.
pub fn factory<F, A, B>(
    make_app: F,
) -> impl ServiceFactory<Upgrade, Config = (), Response = (), Error = actix_web::Error, InitError = ()>
where
    F: Fn() -> A + 'static,
    A: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let app = make_app();
        async move {
            let app = Rc::new(app.new_service(AppConfig::default()).await?);
            Ok(fn_service(move |upgrade: Upgrade| {
                let app = Rc::clone(&app);
                // Boxed: actix-http keeps this future inline in every connection's dispatcher (an
                // enum as large as its largest state), and it holds a whole WebSocket connection.
                // Unboxed, each SSE stream and plain request paid for its size, ~3.7 KiB.
                let serving: LocalBoxFuture<'static, Result<(), actix_web::Error>> =
                    Box::pin(async move { serve(&*app, upgrade).await });
                serving
            }))
        }
    })
}

async fn serve<S, B>(app: &S, (req, mut framed): Upgrade) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let response = match app.call(req).await {
        Ok(response) => response.map_into_boxed_body().into_parts().1,
        Err(err) => err.error_response(),
    };
    let response = actix_http::Response::from(response);
    let (mut head, body) = response.into_parts();
    let accepted = head.extensions_mut().remove::<ws::Accepted>();
    if let Some(accepted) = accepted {
        if head.status() == StatusCode::SWITCHING_PROTOCOLS {
            framed.send(Message::Item((head, BodySize::None))).await?;
            // The codec and its write buffer go now, not when the connection ends.
            let FramedParts { io, read_buf, .. } = framed.into_parts();
            accepted.run(io, read_buf).await;
            return Ok(());
        }
    }
    // Not a WebSocket: answer, then close (the connection was offered for an upgrade only).
    // A streaming answer (an SSE path asked to upgrade) is refused rather than streamed.
    let (mut head, body) = match body.size() {
        BodySize::Stream => {
            let refusal = json_error(StatusCode::BAD_REQUEST, "this path does not upgrade");
            actix_http::Response::from(refusal).into_parts()
        }
        _ => (head, body),
    };
    let body = body::to_bytes(body)
        .await
        .map_err(|err| io::Error::other(err.to_string()))?;
    head.head_mut().set_connection_type(ConnectionType::Close);
    let size = BodySize::Sized(body.len() as u64);
    // One write for head and body: some clients read only what came with the head.
    framed.feed(Message::Item((head, size))).await?;
    framed.feed(Message::Chunk(Some(body))).await?;
    framed.send(Message::Chunk(None)).await?;
    Ok(())
}
