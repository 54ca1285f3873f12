#[test]
fn show() {
    let t = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/three-tier.toml")).unwrap();
    let p = haven_plan::Plan::from_toml(&t).unwrap();
    println!("{}", p.to_toml());
    for i in p.verify() { println!("{i}"); }
    let mut r = std::collections::BTreeMap::new();
    r.insert(haven_plan::GroupId::from("app"), vec![haven_plan::VmRef{connector:"vc".into(), name:"app-01".into()}]);
    println!("{}", p.compile(haven_plan::Mode::Test, &r).unwrap().render());
    println!("{}", p.compile(haven_plan::Mode::Failback, &r).unwrap().render());
}
