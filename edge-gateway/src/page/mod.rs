//! The live page at `GET /` and its JavaScript client, served from the binary itself.
//!
//! Four static files, embedded at compile time (`include_str!`), need no build step and nothing
//! from outside the gateway (no CDN, no web font):
//!
//! | path | file | what it is |
//! | --- | --- | --- |
//! | `/` | `index.html` | the page's markup |
//! | `/style.css` | `style.css` | its look (dark, responsive) |
//! | `/app.js` | `app.js` | the page: games, latest results, protocol switch, latency |
//! | `/datastream.js` | `datastream.js` | the client module customers can use too (docs/client.md) |
//!
//! Every answer carries a strong `ETag` (a hash of the file, computed once); a matching
//! `If-None-Match` gets 304, and `Cache-Control: no-cache` makes browsers revalidate, so a new
//! gateway version is picked up on the next load without stale files.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

/// One embedded file.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

static ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("style.css"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("app.js"),
    },
    Asset {
        path: "/datastream.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("datastream.js"),
    },
];

/// Registers the page's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for (index, asset) in ASSETS.iter().enumerate() {
        cfg.route(
            asset.path,
            web::get().to(move |req: HttpRequest| async move { serve(&req, index) }),
        );
    }
}

fn serve(req: &HttpRequest, index: usize) -> HttpResponse {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag.as_str()));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    if fresh {
        return response.finish();
    }
    response
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .body(asset.body)
}

/// The strong ETag of every asset, in [`ASSETS`] order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let mut hasher = DefaultHasher::new();
                asset.body.hash(&mut hasher);
                format!("\"{:016x}-{:x}\"", hasher.finish(), asset.body.len())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::test as web_test;
    use actix_web::App;

    #[actix_web::test]
    async fn serves_every_file_with_its_type_and_revalidates() {
        let app = web_test::init_service(App::new().configure(routes)).await;
        for asset in &ASSETS {
            let response = web_test::call_service(
                &app,
                web_test::TestRequest::get().uri(asset.path).to_request(),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            let headers = response.headers().clone();
            assert_eq!(
                headers.get(header::CONTENT_TYPE).unwrap(),
                asset.content_type
            );
            assert_eq!(headers.get(header::CACHE_CONTROL).unwrap(), "no-cache");
            let etag = headers
                .get(header::ETAG)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let body = web_test::read_body(response).await;
            assert_eq!(body, asset.body.as_bytes());

            let again = web_test::TestRequest::get()
                .uri(asset.path)
                .insert_header((header::IF_NONE_MATCH, etag.as_str()))
                .to_request();
            let response = web_test::call_service(&app, again).await;
            assert_eq!(
                response.status(),
                StatusCode::NOT_MODIFIED,
                "{}",
                asset.path
            );
            assert!(web_test::read_body(response).await.is_empty());
        }
    }

    #[test]
    fn the_page_loads_only_files_the_gateway_serves() {
        let html = ASSETS[0].body;
        for path in ["/style.css", "/app.js"] {
            assert!(
                html.contains(&format!("\"{path}\"")),
                "index.html loads {path}"
            );
        }
        assert!(ASSETS[2].body.contains("from '/datastream.js'"));
        for asset in &ASSETS {
            for outside in [
                "src=\"http",
                "href=\"http",
                "url(http",
                "@import",
                "//cdn",
                "fonts.",
            ] {
                assert!(
                    !asset.body.contains(outside),
                    "{} loads something from outside the gateway ({outside})",
                    asset.path
                );
            }
        }
    }
}
