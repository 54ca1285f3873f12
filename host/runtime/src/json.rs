//! JSON ⇄ component-model values, for calling any exported function by name
//! (`haven plugin call`, the web API) without compiled-in bindings.
//!
//! Mapping: records are objects; lists and tuples arrays; enums strings;
//! variants `"case"` or `{"case": payload}`; options `null` or the value;
//! results `{"ok": ...}` or `{"err": ...}`; flags arrays of names.

use serde_json::{Map, Number, Value};
use wasmtime::component::types::Type;
use wasmtime::component::Val;

/// A JSON value that does not fit the expected type: (field path, message).
pub(crate) type Mismatch = (String, String);

fn mismatch(path: &str, message: impl Into<String>) -> Mismatch {
    (
        if path.is_empty() {
            "(argument)".into()
        } else {
            path.to_owned()
        },
        message.into(),
    )
}

fn join(path: &str, key: impl std::fmt::Display) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Converts `json` into a value of type `ty`; `path` names it in errors.
pub(crate) fn to_val(json: &Value, ty: &Type, path: &str) -> Result<Val, Mismatch> {
    macro_rules! int {
        ($variant:ident, $t:ty) => {{
            let n = json
                .as_i64()
                .map(i128::from)
                .or_else(|| json.as_u64().map(i128::from))
                .ok_or_else(|| mismatch(path, format!("expected an integer, got {json}")))?;
            Val::$variant(<$t>::try_from(n).map_err(|_| {
                mismatch(path, format!("{n} is out of range for {}", stringify!($t)))
            })?)
        }};
    }
    Ok(match ty {
        Type::Bool => Val::Bool(
            json.as_bool()
                .ok_or_else(|| mismatch(path, format!("expected true or false, got {json}")))?,
        ),
        Type::S8 => int!(S8, i8),
        Type::U8 => int!(U8, u8),
        Type::S16 => int!(S16, i16),
        Type::U16 => int!(U16, u16),
        Type::S32 => int!(S32, i32),
        Type::U32 => int!(U32, u32),
        Type::S64 => int!(S64, i64),
        Type::U64 => int!(U64, u64),
        Type::Float32 => Val::Float32(
            json.as_f64()
                .ok_or_else(|| mismatch(path, "expected a number"))? as f32,
        ),
        Type::Float64 => Val::Float64(
            json.as_f64()
                .ok_or_else(|| mismatch(path, "expected a number"))?,
        ),
        Type::Char => {
            let s = json
                .as_str()
                .ok_or_else(|| mismatch(path, "expected a one-character string"))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => return Err(mismatch(path, "expected exactly one character")),
            }
        }
        Type::String => Val::String(
            json.as_str()
                .ok_or_else(|| mismatch(path, format!("expected a string, got {json}")))?
                .to_owned(),
        ),
        Type::List(list) => {
            let items = json
                .as_array()
                .ok_or_else(|| mismatch(path, format!("expected an array, got {json}")))?;
            let ty = list.ty();
            Val::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_val(item, &ty, &join(path, i)))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Record(record) => {
            let object = json
                .as_object()
                .ok_or_else(|| mismatch(path, format!("expected an object, got {json}")))?;
            let mut fields = Vec::new();
            for field in record.fields() {
                let value = match object.get(field.name) {
                    Some(v) => to_val(v, &field.ty, &join(path, field.name))?,
                    None if matches!(field.ty, Type::Option(_)) => Val::Option(None),
                    None => return Err(mismatch(&join(path, field.name), "is required")),
                };
                fields.push((field.name.to_owned(), value));
            }
            if let Some(unknown) = object
                .keys()
                .find(|k| !record.fields().any(|f| f.name == k.as_str()))
            {
                let known: Vec<_> = record.fields().map(|f| f.name).collect();
                return Err(mismatch(
                    &join(path, unknown),
                    format!("unknown field; expected one of {known:?}"),
                ));
            }
            Val::Record(fields)
        }
        Type::Tuple(tuple) => {
            let items = json
                .as_array()
                .ok_or_else(|| mismatch(path, "expected an array"))?;
            if items.len() != tuple.types().len() {
                return Err(mismatch(
                    path,
                    format!("expected {} elements", tuple.types().len()),
                ));
            }
            Val::Tuple(
                items
                    .iter()
                    .zip(tuple.types())
                    .enumerate()
                    .map(|(i, (item, ty))| to_val(item, &ty, &join(path, i)))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Variant(variant) => {
            let (name, payload) = match json {
                Value::String(name) => (name.as_str(), None),
                Value::Object(o) if o.len() == 1 => {
                    let (k, v) = o.iter().next().expect("one entry");
                    (k.as_str(), Some(v))
                }
                _ => return Err(mismatch(path, "expected \"case\" or {\"case\": payload}")),
            };
            let case = variant.cases().find(|c| c.name == name).ok_or_else(|| {
                let cases: Vec<_> = variant.cases().map(|c| c.name).collect();
                mismatch(
                    path,
                    format!("unknown case {name:?}; expected one of {cases:?}"),
                )
            })?;
            let value = match (&case.ty, payload) {
                (Some(ty), Some(p)) => Some(Box::new(to_val(p, ty, &join(path, name))?)),
                (None, None) | (None, Some(Value::Null)) => None,
                (Some(_), None) => {
                    return Err(mismatch(path, format!("case {name:?} needs a payload")))
                }
                (None, Some(_)) => {
                    return Err(mismatch(path, format!("case {name:?} takes no payload")))
                }
            };
            Val::Variant(name.to_owned(), value)
        }
        Type::Enum(e) => {
            let name = json
                .as_str()
                .ok_or_else(|| mismatch(path, "expected a string"))?;
            if !e.names().any(|n| n == name) {
                let names: Vec<_> = e.names().collect();
                return Err(mismatch(
                    path,
                    format!("unknown value {name:?}; expected one of {names:?}"),
                ));
            }
            Val::Enum(name.to_owned())
        }
        Type::Option(o) => match json {
            Value::Null => Val::Option(None),
            v => Val::Option(Some(Box::new(to_val(v, &o.ty(), path)?))),
        },
        Type::Result(r) => {
            let object = json
                .as_object()
                .filter(|o| o.len() == 1)
                .ok_or_else(|| mismatch(path, "expected {\"ok\": ...} or {\"err\": ...}"))?;
            let (key, value) = object.iter().next().expect("one entry");
            let payload = |ty: Option<Type>, p: &str| -> Result<Option<Box<Val>>, Mismatch> {
                match ty {
                    Some(ty) => Ok(Some(Box::new(to_val(value, &ty, p)?))),
                    None => Ok(None),
                }
            };
            match key.as_str() {
                "ok" => Val::Result(Ok(payload(r.ok(), &join(path, "ok"))?)),
                "err" => Val::Result(Err(payload(r.err(), &join(path, "err"))?)),
                _ => return Err(mismatch(path, "expected {\"ok\": ...} or {\"err\": ...}")),
            }
        }
        Type::Flags(f) => {
            let items = json
                .as_array()
                .ok_or_else(|| mismatch(path, "expected an array of flag names"))?;
            let mut names = Vec::new();
            for item in items {
                let name = item
                    .as_str()
                    .filter(|n| f.names().any(|x| x == *n))
                    .ok_or_else(|| mismatch(path, format!("unknown flag {item}")))?;
                names.push(name.to_owned());
            }
            Val::Flags(names)
        }
        other => {
            return Err(mismatch(
                path,
                format!("values of type {other:?} cannot be given as JSON"),
            ))
        }
    })
}

/// The result was larger than the budget allows.
#[derive(Debug)]
pub(crate) struct TooLarge;

fn spend(budget: &mut u64, bytes: usize) -> Result<(), TooLarge> {
    *budget = budget.checked_sub(bytes as u64).ok_or(TooLarge)?;
    Ok(())
}

/// Converts a value to JSON, spending `budget` (approximate bytes of JSON).
pub(crate) fn from_val(val: &Val, budget: &mut u64) -> Result<Value, TooLarge> {
    spend(budget, 8)?;
    Ok(match val {
        Val::Bool(b) => Value::Bool(*b),
        Val::S8(n) => Value::from(*n),
        Val::U8(n) => Value::from(*n),
        Val::S16(n) => Value::from(*n),
        Val::U16(n) => Value::from(*n),
        Val::S32(n) => Value::from(*n),
        Val::U32(n) => Value::from(*n),
        Val::S64(n) => Value::from(*n),
        Val::U64(n) => Value::from(*n),
        Val::Float32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        Val::Float64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Val::Char(c) => Value::String(c.to_string()),
        Val::String(s) => {
            spend(budget, s.len())?;
            Value::String(s.clone())
        }
        Val::List(items) | Val::Tuple(items) | Val::FixedLengthList(items) => Value::Array(
            items
                .iter()
                .map(|v| from_val(v, budget))
                .collect::<Result<_, _>>()?,
        ),
        Val::Map(entries) => Value::Array(
            entries
                .iter()
                .map(|(k, v)| {
                    Ok(Value::Array(vec![
                        from_val(k, budget)?,
                        from_val(v, budget)?,
                    ]))
                })
                .collect::<Result<_, _>>()?,
        ),
        Val::Record(fields) => {
            let mut object = Map::new();
            for (name, value) in fields {
                spend(budget, name.len())?;
                object.insert(name.clone(), from_val(value, budget)?);
            }
            Value::Object(object)
        }
        Val::Variant(name, None) | Val::Enum(name) => {
            spend(budget, name.len())?;
            Value::String(name.clone())
        }
        Val::Variant(name, Some(payload)) => {
            spend(budget, name.len())?;
            let mut object = Map::new();
            object.insert(name.clone(), from_val(payload, budget)?);
            Value::Object(object)
        }
        Val::Option(None) => Value::Null,
        Val::Option(Some(v)) => from_val(v, budget)?,
        Val::Result(r) => {
            let (key, payload) = match r {
                Ok(p) => ("ok", p),
                Err(p) => ("err", p),
            };
            let mut object = Map::new();
            let value = match payload {
                Some(v) => from_val(v, budget)?,
                None => Value::Null,
            };
            object.insert(key.to_owned(), value);
            Value::Object(object)
        }
        Val::Flags(names) => Value::Array(names.iter().map(|n| Value::String(n.clone())).collect()),
        Val::Resource(_) | Val::Future(_) | Val::Stream(_) | Val::ErrorContext(_) => {
            Value::String("<handle>".into())
        }
    })
}
