#!/usr/bin/env python3
# Write the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/); the files are
# committed, this says how they were made. Run from the repository's top directory.
import gzip, io, os, struct, subprocess, tarfile

def put(target, name, data):
    d = os.path.join("tests/fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)

# --- rpc: the requests of api/PROTOCOL.md, several per input where they build on each other
rpc = {
    "version": '{"jsonrpc":"2.0","id":1,"method":"Version"}',
    "status": '{"jsonrpc":"2.0","id":"s","method":"Status","params":{}}',
    "lifecycle": "\n".join([
        '{"jsonrpc":"2.0","id":1,"method":"Prepare","params":{"key":"base","labels":{"a":"b"}}}',
        '{"jsonrpc":"2.0","id":2,"method":"Apply","params":{"key":"base","fd":0}}',
        '{"jsonrpc":"2.0","id":3,"method":"Commit","params":{"name":"layer1","key":"base"}}',
        '{"jsonrpc":"2.0","id":4,"method":"Prepare","params":{"key":"ctr1","parent":"layer1","progress":true}}',
        '{"jsonrpc":"2.0","id":5,"method":"View","params":{"key":"v1","parent":"layer1"}}',
        '{"jsonrpc":"2.0","id":6,"method":"Remove","params":{"key":"layer1"}}',
        '{"jsonrpc":"2.0","id":7,"method":"Stat","params":{"key":"ctr1"}}',
        '{"jsonrpc":"2.0","id":8,"method":"Diff","params":{"key":"ctr1"}}',
        '{"jsonrpc":"2.0","id":9,"method":"Export","params":{"key":"ctr1","fd":1,"compression":"zstd"}}',
    ]),
    "update-list": "\n".join([
        '{"jsonrpc":"2.0","id":1,"method":"Prepare","params":{"key":"k","labels":{"team":"blue"}}}',
        '{"jsonrpc":"2.0","id":2,"method":"Commit","params":{"name":"layer1","key":"k"}}',
        '{"jsonrpc":"2.0","id":6,"method":"Update","params":{"info":{"name":"layer1","labels":{"team":"red"}},"fieldpaths":["labels.team"]}}',
        '{"jsonrpc":"2.0","id":7,"method":"List","params":{"filters":["kind==committed","labels.team==red","name~=\\"^lay\\""]}}',
        '{"jsonrpc":"2.0","id":8,"method":"Usage","params":{"key":"layer1"}}',
        '{"jsonrpc":"2.0","id":9,"method":"Mounts","params":{"key":"layer1"}}',
        '{"jsonrpc":"2.0","id":10,"method":"Cleanup"}',
    ]),
    "idmap": "\n".join([
        '{"jsonrpc":"2.0","id":1,"method":"Prepare","params":{"key":"p","uid_map":[{"container_id":0,"host_id":100000,"size":65536}],"gid_map":[{"container_id":0,"host_id":100000,"size":65536}],"keep_unmapped":true}}',
        '{"jsonrpc":"2.0","id":2,"method":"Apply","params":{"key":"p","fd":0,"uid_map":[{"container_id":0,"host_id":1000,"size":1}],"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}}',
    ]),
    "clone": '{"jsonrpc":"2.0","id":9,"method":"Clone","params":{"source":"/layout","destination":"/copy","sync":true}}',
    "import": '{"jsonrpc":"2.0","id":11,"method":"Import","params":{"fd":2,"ref":"t1"}}',
    "bad": "\n".join([
        '{"jsonrpc":"2.0","id":1,"method":"Stat","params":{"key":"k"}}',
        '{"jsonrpc":"2.0","method":"Remove","params":{"key":"k"}}',
        '{"jsonrpc":"1.0","id":[],"method":"Stat"}',
        '{"jsonrpc":"2.0","id":3,"method":"Nope","params":[]}',
        '{"jsonrpc":"2.0","id":4,"method":"Stat","params":{"key":"k","key":"k"}}',
        '{"jsonrpc":"2.0","id":5,"method":"Stat","params":{"key":"\\u00e9\\ud800"}}',
        '[1,2',
    ]),
}
for name, text in rpc.items():
    put("rpc", name, text + "\n")

# --- layer: small tars with every kind of entry the apply handles
def tar(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    # surrogateescape: xattr values are bytes, written as such (hdrcharset=BINARY).
    with tarfile.open(fileobj=buf, mode="w", format=fmt, errors="surrogateescape") as t:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.mtime = e.get("mtime", 1700000000)
            info.mode = e.get("mode", 0o644)
            info.uid, info.gid = e.get("owner", (0, 0))
            info.type = e.get("type", tarfile.REGTYPE)
            info.linkname = e.get("link", "")
            info.devmajor, info.devminor = e.get("dev", (0, 0))
            info.pax_headers = {"SCHILY.xattr." + k: v for k, v in e.get("xattrs", {}).items()}
            data = e.get("data", b"")
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if info.size else None)
    # Without tarfile's padding to 10 KiB: the entries and the two zero blocks that end them.
    data = buf.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512 + 1024)

D, L, H, F, C = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE
# system.posix_acl_access: version 2, then (tag, perm, id) entries: user::rw-, user:1000:r--,
# group::r--, mask::r--, other::r--.
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in [
    (1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])
# security.capability v3 (with a root uid): CAP_NET_BIND_SERVICE permitted and effective.
cap = struct.pack("<IIIIII", 0x03000001, 1 << 10, 0, 0, 0, 0)
base = tar([
    {"name": "etc/", "type": D, "mode": 0o755},
    {"name": "etc/passwd", "data": b"root:x:0:0::/root:/bin/sh\n", "mtime": 1700000000.25},
    {"name": "etc/acl", "data": b"a", "xattrs": {"system.posix_acl_access": acl.decode("utf-8", "surrogateescape"),
                                                 "user.note": "hi"}},
    {"name": "bin/", "type": D, "mode": 0o755},
    {"name": "bin/ping", "data": b"\x7fELF", "mode": 0o4755, "owner": (1000, 1000),
     "xattrs": {"security.capability": cap.decode("utf-8", "surrogateescape")}},
    {"name": "bin/sh", "type": L, "link": "ping", "mode": 0o777},
    {"name": "bin/sh2", "type": H, "link": "bin/ping"},
    {"name": "dev/", "type": D},
    {"name": "dev/null", "type": C, "dev": (1, 3), "mode": 0o666},
    {"name": "run/fifo", "type": F},
])
put("layer", "base.tar", base)
upper = tar([
    {"name": "etc/", "type": D, "mode": 0o755},
    {"name": "etc/.wh.passwd"},
    {"name": "bin/", "type": D, "mode": 0o700},
    {"name": "bin/.wh..wh..opq"},
    {"name": "bin/new", "data": b"new\n"},
    {"name": "./lib", "type": L, "link": "usr/lib"},
    {"name": "usr/lib/x", "data": b"x"},
    {"name": "lib/y", "data": b"through the link"},
])
put("layer", "whiteouts.tar", upper)
put("layer", "whiteouts.tar.gz", gzip.compress(upper, mtime=0))
put("layer", "base.tar.zst", subprocess.run(["zstd", "-q", "-c", "-19"], input=base,
                                            capture_output=True, check=True).stdout)
put("layer", "gnu.tar", tar([
    {"name": "a/" + "long-name-" * 12, "data": b"gnu long name"},
    {"name": "a/link", "type": L, "link": "t/" * 60},
], fmt=tarfile.GNU_FORMAT))
put("layer", "escape.tar", tar([
    {"name": "../escape", "data": b"no"},
    {"name": "/abs", "data": b"no"},
    {"name": "up", "type": L, "link": "../.."},
    {"name": "up/x", "data": b"no"},
    {"name": "hard", "type": H, "link": "../sentinel"},
]))

# --- image: index, manifest and config with the harness's placeholders (harness-image.c)
index = '''{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$MD","size":$MS,
"annotations":{"org.opencontainers.image.ref.name":"t1"},"platform":{"architecture":"amd64","os":"linux"}}]}'''
manifest = '''{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CD","size":$CS},
"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$AD","size":$AS},
{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$BD","size":$BS}]}'''
config = '''{"architecture":"amd64","os":"linux","config":{},
"rootfs":{"type":"layers","diff_ids":["$AI","$BI"]},"history":[{"created_by":"fuzz"}]}'''
put("image", "two-layers", index + "\n---\n" + manifest + "\n---\n" + config)
put("image", "one-layer", index + "\n---\n" + manifest.replace(
    ',\n{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$BD","size":$BS}', "")
    + "\n---\n" + config.replace(',"$BI"', ""))
put("image", "no-layers", index + "\n---\n" + manifest.replace(
    '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$AD","size":$AS},\n'
    '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$BD","size":$BS}]', '"layers":[]')
    + "\n---\n" + '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}')
put("image", "nested-index", '''{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"$MD","size":$MS}]}'''
    + "\n---\n" + '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$CD","size":$CS,"platform":{"architecture":"amd64","os":"linux"}}]}'
    + "\n---\n" + manifest)
put("image", "docker-media-types", index.replace("application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json") + "\n---\n" + manifest.replace(
    "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")
    + "\n---\n" + config)
