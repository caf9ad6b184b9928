//! The thin `fuser` adapter: translates FUSE requests to `Files` calls and `Files` answers
//! (errno values, `Attr`) to FUSE replies. What a request may do is decided in `Files`; the
//! adapter decides only how to reply (the FUSE flags of an open, the TTLs of an entry). Every
//! error reply goes through `fuse_error!`, which counts and logs the failure first.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, Request,
};

use crate::error::{FsError, Level, Op};
use crate::files::{Attr, Files, Kind, Opened, Requester, is_generated};

/// How long the kernel may trust attributes and names: long, because every change is pushed
/// to it with an explicit invalidation.
const TTL: Duration = Duration::from_secs(3600);

/// Replies to `$reply` with the errno of `$err` (an [`FsError`]) after `Files::failed` has
/// counted it under `$op` and logged it (the shape of mountpoint-s3's `fuse_error!`).
macro_rules! fuse_error {
    ($fs:expr, $op:expr, $reply:expr, $err:expr) => {{
        let err: FsError = $err;
        $fs.failed($op, &err);
        $reply.error(Errno::from_i32(err.errno));
    }};
}

fn requester(req: &Request) -> Requester {
    Requester {
        uid: req.uid(),
        pid: req.pid(),
    }
}

/// The FUSE face of [`Files`].
#[derive(Debug)]
pub struct Adapter(pub Arc<Files>);

fn attr(a: Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The status area's files change on every look: never cached.
fn ttl(ino: u64) -> Duration {
    if is_generated(ino) {
        Duration::ZERO
    } else {
        TTL
    }
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match name
            .to_str()
            .ok_or_else(|| FsError::not_found(format!("a name that is not UTF-8: {name:?}")))
            .and_then(|n| self.0.lookup(parent.0, n))
        {
            Ok(a) => reply.entry(&ttl(a.ino), &attr(a), Generation(0)),
            Err(e) => fuse_error!(self.0, Op::Lookup, reply, e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino.0) {
            Ok(a) => reply.attr(&ttl(a.ino), &attr(a)),
            Err(e) => fuse_error!(self.0, Op::Getattr, reply, e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0;
        match self.0.open(ino.0, write, requester(req)) {
            Ok(Opened::Direct(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Ok(Opened::KeepCache(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(Opened::Fresh(fh)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            // Not a failure: tells the kernel to stop sending opens.
            Ok(Opened::NotNeeded) => reply.error(Errno::ENOSYS),
            Err(e) => fuse_error!(self.0, Op::Open, reply, e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut reply = Some(reply);
        let r = self
            .0
            .read(ino.0, fh.0, offset, size, requester(req), &mut |b| {
                if let Some(r) = reply.take() {
                    r.data(b)
                }
            });
        if let (Err(e), Some(reply)) = (r, reply) {
            fuse_error!(self.0, Op::Read, reply, e);
        }
    }

    /// Nothing to flush: answering ENOSYS once makes the kernel stop sending flushes, so a
    /// close costs no round trip.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.0.count_other();
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.0.count_other();
        if ino != INodeNo::ROOT {
            let e = FsError::new(
                libc::ENOTDIR,
                Level::Warn,
                format!("inode {ino}: not a directory"),
            );
            return fuse_error!(self.0, Op::Readdir, reply, e);
        }
        for (n, (ino, name, kind)) in self
            .0
            .entries()
            .into_iter()
            .enumerate()
            .skip(offset as usize)
        {
            let kind = if kind == Kind::Dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(ino), n as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
