use super::*;

#[test]
fn put_get_dedup_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let raw: Vec<u8> = (0..5000u32)
        .flat_map(|i| (i as u16).to_le_bytes())
        .collect();
    let (id, new) = store.put(Kind::Tile, Filter::Shuffle(2), &raw).unwrap();
    assert!(new);
    let (id2, new2) = store.put(Kind::Tile, Filter::Shuffle(2), &raw).unwrap();
    assert_eq!((id, false), (id2, new2));
    assert_eq!(store.get(&id).unwrap(), raw);
    assert_eq!(store.list().unwrap().0, vec![id]);
    let lock = crate::lock::RepoLock::acquire(&dir.path().join("lock")).unwrap();
    assert_eq!(store.roll_back(&lock), 1);
    assert!(!store.contains(&id));
}

#[test]
fn flipped_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (id, _) = store
        .put(Kind::Blob, Filter::None, b"hello hello hello")
        .unwrap();
    let path = store.path_of(&id);
    let mut bytes = fs::read(&path).unwrap();
    for i in 0..bytes.len() {
        bytes[i] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert!(store.verify(&id).is_some(), "flip at byte {i} not detected");
        bytes[i] ^= 0x40;
    }
    fs::write(&path, &bytes).unwrap();
    assert!(store.verify(&id).is_none());
}

#[test]
fn hex_round_trip() {
    let id = ObjectId::of(b"x");
    assert_eq!(ObjectId::from_hex(&id.to_hex()).unwrap(), id);
    assert!(ObjectId::from_hex("zz").is_err());
}

/// Three tile objects' ids and stored forms, made in a scratch store.
fn stored_objects() -> Vec<(ObjectId, Vec<u8>)> {
    let scratch = tempfile::tempdir().unwrap();
    let store = Store::open(scratch.path()).unwrap();
    (0..3u16)
        .map(|k| {
            let raw: Vec<u8> = (0..4000u16)
                .flat_map(|i| (i * (k + 1)).to_le_bytes())
                .collect();
            let (id, _) = store.put(Kind::Tile, Filter::Shuffle(2), &raw).unwrap();
            (id, fs::read(store.path_of(&id)).unwrap())
        })
        .collect()
}

/// The file of the one pack in store `dir` with extension `ext`.
fn packed_file(dir: &Path, ext: &str) -> PathBuf {
    fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .unwrap()
}

fn borrowed(objects: &[(ObjectId, Vec<u8>)]) -> Vec<(ObjectId, &[u8])> {
    objects.iter().map(|(id, b)| (*id, &b[..])).collect()
}

#[test]
fn packed_objects_are_read_listed_and_checked_like_files() {
    let dir = tempfile::tempdir().unwrap();
    let objects = stored_objects();
    let store = Store::open(dir.path()).unwrap();
    store.put_stored_pack(&borrowed(&objects)).unwrap();
    assert!(!dir.path().join(&objects[0].0.to_hex()[..2]).exists());
    // A second store on the same folder (another process) finds them too.
    let other = Store::open(dir.path()).unwrap();
    let mut ids: Vec<ObjectId> = objects.iter().map(|(id, _)| *id).collect();
    ids.sort();
    let (mut listed, stray) = other.list().unwrap();
    listed.sort();
    assert_eq!((listed, stray), (ids.clone(), vec![]));
    for (id, bytes) in &objects {
        assert!(other.contains(id));
        assert_eq!(other.stored_len(id), Some(bytes.len() as u64));
        assert_eq!(ObjectId::of(&other.get(id).unwrap()), *id);
        assert!(other.verify(id).is_none());
    }
    assert!(other.missing(ids.iter().copied()).is_empty());
    // Storing them again writes no second pack.
    other.put_stored_pack(&borrowed(&objects)).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("packs")).unwrap().count(), 2);
}

#[test]
fn a_pack_with_a_bad_object_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = stored_objects();
    let last = objects[2].1.len() - 1;
    objects[2].1[last] ^= 1;
    let store = Store::open(dir.path()).unwrap();
    let e = format!(
        "{:#}",
        store.put_stored_pack(&borrowed(&objects)).unwrap_err()
    );
    assert!(e.contains(&objects[2].0.to_string()), "{e}");
    assert!(store.list().unwrap().0.is_empty());
    assert!(!store.contains(&objects[0].0));
}

#[test]
fn a_flipped_byte_in_a_pack_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let objects = stored_objects();
    Store::open(dir.path())
        .unwrap()
        .put_stored_pack(&borrowed(&objects))
        .unwrap();
    let pack = packed_file(dir.path(), "pack");
    let mut bytes = fs::read(&pack).unwrap();
    let middle = objects[0].1.len() + objects[1].1.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(&pack, &bytes).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let damaged: Vec<_> = objects
        .iter()
        .filter_map(|(id, _)| store.verify(id))
        .collect();
    assert!(
        matches!(damaged.as_slice(), [Damage::Corrupt { id, .. }] if *id == objects[1].0),
        "{damaged:?}"
    );
    assert!(store.location(&objects[1].0).contains(".pack at byte"));
}

#[test]
fn sweep_keeps_the_kept_objects_of_a_pack_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let objects = stored_objects();
    let store = Store::open(dir.path()).unwrap();
    store.put_stored_pack(&borrowed(&objects)).unwrap();
    // Left by killed writers: a pack whose index never came, and a temp file.
    let packs = dir.path().join("packs");
    fs::write(packs.join(format!("{}.pack", "ab".repeat(32))), b"partial").unwrap();
    fs::write(packs.join(".tmp-x"), b"partial").unwrap();
    assert_eq!(store.list().unwrap().1.len(), 2);
    let keep: BTreeSet<ObjectId> = [objects[0].0, objects[2].0].into();
    let (count, bytes) = store.sweep(&keep).unwrap();
    assert_eq!(count, 3, "one object and two stray files");
    assert!(bytes >= objects[1].1.len() as u64);
    let other = Store::open(dir.path()).unwrap();
    let (mut listed, stray) = other.list().unwrap();
    listed.sort();
    assert_eq!((listed, stray), (keep.iter().copied().collect(), vec![]));
    for id in &keep {
        assert_eq!(ObjectId::of(&store.get(id).unwrap()), *id);
        assert_eq!(ObjectId::of(&other.get(id).unwrap()), *id);
    }
    assert!(!store.contains(&objects[1].0) && !other.contains(&objects[1].0));
    // Nothing kept: the pack goes.
    store.sweep(&BTreeSet::new()).unwrap();
    assert_eq!(fs::read_dir(&packs).unwrap().count(), 0);
}

#[test]
fn an_unreadable_pack_index_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let objects = stored_objects();
    let store = Store::open(dir.path()).unwrap();
    store.put_stored_pack(&borrowed(&objects)).unwrap();
    let idx = packed_file(dir.path(), "idx");
    let mut bytes = fs::read(&idx).unwrap();
    bytes.truncate(bytes.len() - 5);
    fs::write(&idx, &bytes).unwrap();
    let other = Store::open(dir.path()).unwrap();
    let damaged = other.damaged_packs();
    assert!(
        damaged.len() == 1 && damaged[0].contains("truncated"),
        "{damaged:?}"
    );
    assert!(!other.contains(&objects[0].0));
}
