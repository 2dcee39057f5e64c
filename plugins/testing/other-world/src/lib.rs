//! Fixture: a valid component of another world (`test:other/other`, in this
//! crate's `wit/`), which the host must refuse at upload.

wit_bindgen::generate!({ path: "wit", world: "other" });

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "hello from another world".into()
    }
}

export!(Other);
