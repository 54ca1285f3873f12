//! The OpenAPI 3.1 document, built from the route table ([`crate::routes`]),
//! so every route is documented by construction.

use axum::Json;
use serde_json::{json, Map, Value};

use crate::routes::{table, Access, Body};

/// `GET /openapi.json`
pub async fn serve() -> Json<Value> {
    Json(document())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn body_schema(fields: &[&str]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in fields {
        let (name, kind) = field.split_once(": ").unwrap_or((field, "string"));
        let (name, optional) = match name.strip_suffix('?') {
            Some(n) => (n, true),
            None => (name, false),
        };
        if !optional {
            required.push(json!(name));
        }
        let schema = if kind == "integer" {
            json!({"type": "integer", "minimum": 0})
        } else if kind.starts_with("array") {
            json!({"type": "array", "items": {"type": "string"}, "description": kind})
        } else if kind.contains('|') {
            json!({"type": "string", "enum": kind.split('|').collect::<Vec<_>>()})
        } else {
            json!({"type": "string"})
        };
        properties.insert(name.to_owned(), schema);
    }
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in table() {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        for q in route.query {
            let (name, meaning) = q.split_once(": ").unwrap_or((q, ""));
            parameters.push(json!({"name": name, "in": "query", "required": false, "description": meaning, "schema": {"type": "string"}}));
        }
        let mut responses = Map::new();
        responses.insert("2XX".into(), json!({"description": route.answers}));
        responses.insert(
            "400".into(),
            error_response("Malformed request (the field is named)."),
        );
        if route.access != Access::Public {
            responses.insert("401".into(), error_response("Missing or invalid token."));
            responses.insert(
                "403".into(),
                error_response("The token's role or plan sets do not allow this."),
            );
            responses.insert(
                "404".into(),
                error_response("No such thing (or not in the token's plan sets)."),
            );
        }
        if route.method != axum::http::Method::GET {
            responses.insert("307".into(), json!({"description": "This node is a follower: repeat the request at `Location` (the primary)."}));
            responses.insert(
                "409".into(),
                error_response("The state does not allow this now."),
            );
            responses.insert(
                "412".into(),
                error_response("`If-Match` names another version."),
            );
            responses.insert(
                "422".into(),
                error_response("Invalid content (the field is named)."),
            );
            responses.insert(
                "503".into(),
                error_response("No primary known yet; retry after `Retry-After`."),
            );
        }
        let mut operation = json!({
            "summary": route.summary,
            "operationId": format!("{} {}", route.method, route.path),
            "parameters": parameters,
            "responses": responses,
        });
        match route.access {
            Access::Public => operation["security"] = json!([]),
            Access::Read => operation["x-haven-role"] = json!("any"),
            Access::Role(role) => operation["x-haven-role"] = json!(role),
        }
        match route.body {
            Body::None => {}
            Body::Plan => {
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/toml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object", "description": "the plan model"}}
                }});
            }
            Body::Json(fields) => {
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/json": {"schema": body_schema(fields)}
                }});
            }
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Haven API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Disaster-recovery orchestration: plans, executions, readiness, reports, inventory. Authenticate with `Authorization: Bearer <token>`; errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string"}
                    }
                }}
            }}
        }
    })
}
