/* An object store for tests: TensorFlow filesystem plugin for the scheme `objstore://`.
 *
 * Built by tests/support/objstore.py (gcc, at test time) and loaded with
 * `tf.experimental.register_filesystem_plugin`, so TensorFlow's C++ code (SaveV2,
 * MergeV2Checkpoints, SavedModel writing, event files) goes through it as well as
 * `tf.io.gfile`. Its semantics follow TensorFlow's own GCS filesystem (gs://):
 *
 * - A path `objstore://KEY` names one object; keys are flat strings. Objects live in the
 *   local folder named by the environment variable VADER_OBJSTORE_ROOT, one file per
 *   key (the key percent-encoded into a file name), so several processes share the store
 *   and the objects of a killed process survive it.
 * - Buckets: the first path component (`objstore://BUCKET/...`) is a bucket, which
 *   always exists (gs:// requires it to; here any name will do).
 * - No directories: a "directory" `D` exists only while some key starts with `D/`.
 *   Creating a directory writes an empty marker object `D/` (as gs:// does);
 *   `is_directory(D)` is true iff D is a bucket or some key starts with `D/`; listings
 *   are computed from the keys and name sub-directories with a trailing `/` (as gs://
 *   does).
 * - A write becomes visible when the file is flushed, synced or closed, and then
 *   replaces the whole object at once (an upload of everything appended so far, as
 *   gs:// does); a reader never sees a half-uploaded object, and nothing of a file
 *   killed before its first flush.
 * - No rename: renaming a file copies the object and then deletes the source (a
 *   process killed in between leaves both); renaming a directory does that object by
 *   object, in key order (a kill leaves a partial target and a partial source).
 * - Memory-mapped reads are not supported (as on gs://).
 * - Unlike gs://, TensorFlow takes this rename for atomic (the plugin API cannot say
 *   otherwise), so `atomic_write_string_to_file` (the checkpoint state file) writes a
 *   `.tmp<hex>` object and renames it, where on gs:// it uploads in place.
 *
 * Fault injection: with VADER_OBJSTORE_KILL_BEFORE=`upload:TEXT` (or `delete:TEXT`) the
 * process SIGKILLs itself right before its first upload (or delete) of an object whose
 * key contains TEXT, e.g. between the copy and the delete of a rename.
 *
 * Compiled as C against the C++-flavoured header with -Dconstexpr="static const".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensorflow/c/experimental/filesystem/filesystem_interface.h"

#define SCHEME "objstore"
#define PREFIX SCHEME "://"

static void set_status(TF_Status* status, TF_Code code, const char* what, const char* key) {
  char message[4096];
  snprintf(message, sizeof message, "objstore: %s: " PREFIX "%s", what, key);
  TF_SetStatus(status, code, message);
}

/* The key of a path: `objstore://a/b/` -> `a/b` (caller frees). */
static char* key_of(const char* path) {
  if (strncmp(path, PREFIX, strlen(PREFIX)) == 0) path += strlen(PREFIX);
  char* key = strdup(path);
  size_t n = strlen(key);
  while (n > 0 && key[n - 1] == '/') key[--n] = '\0';
  return key;
}

static char* concat(const char* a, const char* b) {
  char* out = malloc(strlen(a) + strlen(b) + 1);
  strcpy(out, a);
  strcat(out, b);
  return out;
}

static const char* root(void) {
  const char* r = getenv("VADER_OBJSTORE_ROOT");
  return r ? r : "";
}

/* The backing file of object `key`: every byte outside [A-Za-z0-9_-] as %XX. */
static char* object_file(const char* key) {
  const char* r = root();
  char* out = malloc(strlen(r) + 2 + 3 * strlen(key) + 1);
  char* p = out + sprintf(out, "%s/", r);
  for (const unsigned char* c = (const unsigned char*)key; *c; ++c) {
    if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
        *c == '_' || *c == '-')
      *p++ = (char)*c;
    else
      p += sprintf(p, "%%%02X", *c);
  }
  *p = '\0';
  return out;
}

static char* decode(const char* name) {
  char* out = malloc(strlen(name) + 1);
  char* p = out;
  for (; *name; ++name) {
    unsigned int byte;
    if (*name == '%' && sscanf(name + 1, "%2X", &byte) == 1) {
      *p++ = (char)byte;
      name += 2;
    } else {
      *p++ = *name;
    }
  }
  *p = '\0';
  return out;
}

typedef struct {
  char** items;
  size_t size, capacity;
} Strings;

static void strings_add(Strings* s, char* item) { /* takes ownership */
  for (size_t i = 0; i < s->size; ++i)
    if (strcmp(s->items[i], item) == 0) {
      free(item);
      return;
    }
  if (s->size == s->capacity) {
    s->capacity = s->capacity ? 2 * s->capacity : 16;
    s->items = realloc(s->items, s->capacity * sizeof(char*));
  }
  s->items[s->size++] = item;
}

static void strings_free(Strings* s) {
  for (size_t i = 0; i < s->size; ++i) free(s->items[i]);
  free(s->items);
}

static int compare_strings(const void* a, const void* b) {
  return strcmp(*(char* const*)a, *(char* const*)b);
}

/* Every key starting with `prefix`, sorted (a bucket listing). */
static Strings list_keys(const char* prefix) {
  Strings keys = {0};
  DIR* dir = opendir(root());
  if (!dir) return keys;
  struct dirent* entry;
  while ((entry = readdir(dir)) != NULL) {
    if (entry->d_name[0] == '.') continue; /* `.`, `..` and uploads in progress */
    char* key = decode(entry->d_name);
    if (strncmp(key, prefix, strlen(prefix)) == 0)
      strings_add(&keys, key);
    else
      free(key);
  }
  closedir(dir);
  qsort(keys.items, keys.size, sizeof(char*), compare_strings);
  return keys;
}

static bool object_exists(const char* key) {
  if (!*key) return false;
  char* file = object_file(key);
  struct stat st;
  bool exists = stat(file, &st) == 0 && S_ISREG(st.st_mode);
  free(file);
  return exists;
}

static bool directory_exists(const char* key) {
  if (!strchr(key, '/')) return true; /* The store's root or a bucket: always there. */
  char* prefix = concat(key, "/");
  Strings keys = list_keys(prefix);
  bool exists = keys.size > 0;
  strings_free(&keys);
  free(prefix);
  return exists;
}

/* SIGKILLs this process if VADER_OBJSTORE_KILL_BEFORE names `operation` on `key`. */
static void maybe_die(const char* operation, const char* key) {
  const char* spec = getenv("VADER_OBJSTORE_KILL_BEFORE");
  size_t n = strlen(operation);
  if (spec && strncmp(spec, operation, n) == 0 && spec[n] == ':' && strstr(key, spec + n + 1))
    kill(getpid(), SIGKILL);
}

/* Replaces object `key` by `data` at once: a hidden upload file renamed into place. */
static bool upload(const char* key, const char* data, size_t length) {
  static int counter = 0;
  char upload_file[4096];
  maybe_die("upload", key);
  snprintf(upload_file, sizeof upload_file, "%s/.upload-%d-%d", root(), (int)getpid(),
           __sync_fetch_and_add(&counter, 1));
  FILE* f = fopen(upload_file, "wb");
  if (!f) return false;
  bool ok = fwrite(data, 1, length, f) == length;
  ok = (fclose(f) == 0) && ok;
  char* file = object_file(key);
  ok = ok && rename(upload_file, file) == 0;
  if (!ok) unlink(upload_file);
  free(file);
  return ok;
}

static bool download(const char* key, char** data, size_t* length) {
  char* file = object_file(key);
  FILE* f = fopen(file, "rb");
  free(file);
  if (!f) return false;
  fseek(f, 0, SEEK_END);
  *length = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc(*length + 1);
  bool ok = fread(*data, 1, *length, f) == *length;
  fclose(f);
  if (!ok) free(*data);
  return ok;
}

static bool delete_object(const char* key) {
  maybe_die("delete", key);
  char* file = object_file(key);
  bool ok = unlink(file) == 0;
  free(file);
  return ok;
}

static bool copy_object(const char* source, const char* target) {
  char* data;
  size_t length;
  if (!download(source, &data, &length)) return false;
  bool ok = upload(target, data, length);
  free(data);
  return ok;
}

/* Random access files: a snapshot of the object taken when it is opened. */

typedef struct {
  char* data;
  size_t length;
} Snapshot;

static void raf_cleanup(TF_RandomAccessFile* file) {
  Snapshot* s = file->plugin_file;
  free(s->data);
  free(s);
}

static int64_t raf_read(const TF_RandomAccessFile* file, uint64_t offset, size_t n,
                        char* buffer, TF_Status* status) {
  const Snapshot* s = file->plugin_file;
  size_t available = offset < s->length ? s->length - offset : 0;
  size_t count = n < available ? n : available;
  if (count) memcpy(buffer, s->data + offset, count);
  if (count < n)
    TF_SetStatus(status, TF_OUT_OF_RANGE, "objstore: read past the end of the object");
  else
    TF_SetStatus(status, TF_OK, "");
  return (int64_t)count;
}

static void new_random_access_file(const TF_Filesystem* fs, const char* path,
                                   TF_RandomAccessFile* file, TF_Status* status) {
  char* key = key_of(path);
  Snapshot* s = calloc(1, sizeof(Snapshot));
  if (!download(key, &s->data, &s->length)) {
    free(s);
    set_status(status, TF_NOT_FOUND, "no such object", key);
  } else {
    file->plugin_file = s;
    TF_SetStatus(status, TF_OK, "");
  }
  free(key);
}

/* Writable files: appended bytes stay in memory until a flush, sync or close uploads
 * them all. */

typedef struct {
  char* key;
  char* data;
  size_t length, capacity;
} Upload;

static void wf_cleanup(TF_WritableFile* file) {
  Upload* u = file->plugin_file;
  free(u->key);
  free(u->data);
  free(u);
}

static void wf_append(const TF_WritableFile* file, const char* buffer, size_t n,
                      TF_Status* status) {
  Upload* u = file->plugin_file;
  if (u->length + n > u->capacity) {
    u->capacity = 2 * (u->length + n) + 1024;
    u->data = realloc(u->data, u->capacity);
  }
  memcpy(u->data + u->length, buffer, n);
  u->length += n;
  TF_SetStatus(status, TF_OK, "");
}

static int64_t wf_tell(const TF_WritableFile* file, TF_Status* status) {
  TF_SetStatus(status, TF_OK, "");
  return (int64_t)((Upload*)file->plugin_file)->length;
}

static void wf_sync(const TF_WritableFile* file, TF_Status* status) {
  Upload* u = file->plugin_file;
  if (upload(u->key, u->data, u->length))
    TF_SetStatus(status, TF_OK, "");
  else
    set_status(status, TF_INTERNAL, "upload failed", u->key);
}

static void open_upload(const char* path, TF_WritableFile* file, TF_Status* status,
                        bool append) {
  Upload* u = calloc(1, sizeof(Upload));
  u->key = key_of(path);
  if (append && object_exists(u->key)) {
    download(u->key, &u->data, &u->length);
    u->capacity = u->length;
  }
  file->plugin_file = u;
  TF_SetStatus(status, TF_OK, "");
}

static void new_writable_file(const TF_Filesystem* fs, const char* path, TF_WritableFile* file,
                              TF_Status* status) {
  open_upload(path, file, status, false);
}

static void new_appendable_file(const TF_Filesystem* fs, const char* path,
                                TF_WritableFile* file, TF_Status* status) {
  open_upload(path, file, status, true);
}

/* The filesystem. */

static void fs_init(TF_Filesystem* fs, TF_Status* status) {
  if (!getenv("VADER_OBJSTORE_ROOT"))
    TF_SetStatus(status, TF_FAILED_PRECONDITION, "objstore: VADER_OBJSTORE_ROOT is not set");
  else
    TF_SetStatus(status, TF_OK, "");
}

static void fs_cleanup(TF_Filesystem* fs) {}

static char* translate_name(const TF_Filesystem* fs, const char* uri) {
  return strdup(uri); /* Keep the whole URI: the default would drop the "host". */
}

static void create_dir(const TF_Filesystem* fs, const char* path, TF_Status* status) {
  char* key = key_of(path);
  if (object_exists(key) || directory_exists(key)) {
    set_status(status, TF_ALREADY_EXISTS, "already exists", key);
  } else {
    char* marker = concat(key, "/");
    if (upload(marker, "", 0))
      TF_SetStatus(status, TF_OK, "");
    else
      set_status(status, TF_INTERNAL, "upload failed", marker);
    free(marker);
  }
  free(key);
}

static void delete_file(const TF_Filesystem* fs, const char* path, TF_Status* status) {
  char* key = key_of(path);
  if (object_exists(key) && delete_object(key))
    TF_SetStatus(status, TF_OK, "");
  else
    set_status(status, TF_NOT_FOUND, "no such object", key);
  free(key);
}

static void delete_dir(const TF_Filesystem* fs, const char* path, TF_Status* status) {
  char* key = key_of(path);
  char* marker = concat(key, "/");
  Strings keys = list_keys(marker);
  if (keys.size == 0)
    set_status(status, TF_NOT_FOUND, "no such directory", key);
  else if (keys.size > 1 || strcmp(keys.items[0], marker) != 0)
    set_status(status, TF_FAILED_PRECONDITION, "directory not empty", key);
  else if (delete_object(marker))
    TF_SetStatus(status, TF_OK, "");
  else
    set_status(status, TF_INTERNAL, "delete failed", key);
  strings_free(&keys);
  free(marker);
  free(key);
}

static void delete_recursively(const TF_Filesystem* fs, const char* path,
                               uint64_t* undeleted_files, uint64_t* undeleted_dirs,
                               TF_Status* status) {
  char* key = key_of(path);
  char* prefix = concat(key, "/");
  Strings keys = list_keys(prefix);
  bool found = keys.size > 0 || object_exists(key);
  *undeleted_files = 0;
  *undeleted_dirs = 0;
  for (size_t i = 0; i < keys.size; ++i)
    if (!delete_object(keys.items[i])) ++*undeleted_files;
  if (object_exists(key) && !delete_object(key)) ++*undeleted_files;
  if (found) {
    TF_SetStatus(status, TF_OK, "");
  } else {
    *undeleted_dirs = 1;
    set_status(status, TF_NOT_FOUND, "no such directory", key);
  }
  strings_free(&keys);
  free(prefix);
  free(key);
}

static void copy_file(const TF_Filesystem* fs, const char* src, const char* dst,
                      TF_Status* status) {
  char* source = key_of(src);
  char* target = key_of(dst);
  if (!object_exists(source))
    set_status(status, TF_NOT_FOUND, "no such object", source);
  else if (!copy_object(source, target))
    set_status(status, TF_INTERNAL, "copy failed", source);
  else
    TF_SetStatus(status, TF_OK, "");
  free(source);
  free(target);
}

/* A copy, then a delete: never atomic. */
static void rename_file(const TF_Filesystem* fs, const char* src, const char* dst,
                        TF_Status* status) {
  char* source = key_of(src);
  char* target = key_of(dst);
  TF_SetStatus(status, TF_OK, "");
  if (object_exists(source)) {
    if (!copy_object(source, target) || !delete_object(source))
      set_status(status, TF_INTERNAL, "rename failed", source);
  } else if (directory_exists(source)) {
    char* prefix = concat(source, "/");
    Strings keys = list_keys(prefix);
    for (size_t i = 0; i < keys.size; ++i) {
      char* moved = concat(target, keys.items[i] + strlen(source));
      bool ok = copy_object(keys.items[i], moved) && delete_object(keys.items[i]);
      free(moved);
      if (!ok) {
        set_status(status, TF_INTERNAL, "rename failed", keys.items[i]);
        break;
      }
    }
    strings_free(&keys);
    free(prefix);
  } else {
    set_status(status, TF_NOT_FOUND, "no such object", source);
  }
  free(source);
  free(target);
}

static void path_exists(const TF_Filesystem* fs, const char* path, TF_Status* status) {
  char* key = key_of(path);
  if (object_exists(key) || directory_exists(key))
    TF_SetStatus(status, TF_OK, "");
  else
    set_status(status, TF_NOT_FOUND, "not found", key);
  free(key);
}

static void fs_stat(const TF_Filesystem* fs, const char* path, TF_FileStatistics* stats,
                    TF_Status* status) {
  char* key = key_of(path);
  char* file = object_file(key);
  struct stat st;
  TF_SetStatus(status, TF_OK, "");
  if (*key && stat(file, &st) == 0 && S_ISREG(st.st_mode)) {
    stats->length = st.st_size;
    stats->mtime_nsec = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    stats->is_directory = false;
  } else if (directory_exists(key)) {
    stats->length = 0;
    stats->mtime_nsec = 0;
    stats->is_directory = true;
  } else {
    set_status(status, TF_NOT_FOUND, "not found", key);
  }
  free(file);
  free(key);
}

static bool is_directory(const TF_Filesystem* fs, const char* path, TF_Status* status) {
  char* key = key_of(path);
  bool result = directory_exists(key);
  if (result)
    TF_SetStatus(status, TF_OK, "");
  else if (object_exists(key))
    set_status(status, TF_FAILED_PRECONDITION, "not a directory", key);
  else
    set_status(status, TF_NOT_FOUND, "not found", key);
  free(key);
  return result;
}

static int64_t get_file_size(const TF_Filesystem* fs, const char* path, TF_Status* status) {
  TF_FileStatistics stats;
  fs_stat(fs, path, &stats, status);
  return TF_GetCode(status) == TF_OK ? stats.length : -1;
}

static int to_entries(Strings* found, char*** entries) {
  *entries = malloc((found->size ? found->size : 1) * sizeof(char*));
  for (size_t i = 0; i < found->size; ++i) (*entries)[i] = found->items[i];
  int count = (int)found->size;
  free(found->items); /* The strings now belong to the caller. */
  return count;
}

/* Names directly under a directory; sub-directories end with `/` (as on gs://). */
static int get_children(const TF_Filesystem* fs, const char* path, char*** entries,
                        TF_Status* status) {
  char* key = key_of(path);
  Strings children = {0};
  if (!directory_exists(key)) {
    set_status(status, TF_NOT_FOUND, "no such directory", key);
    free(key);
    *entries = NULL;
    return -1;
  }
  char* prefix = *key ? concat(key, "/") : strdup("");
  Strings keys = list_keys(prefix);
  for (size_t i = 0; i < keys.size; ++i) {
    const char* rest = keys.items[i] + strlen(prefix);
    if (!*rest) continue; /* The directory's own marker. */
    const char* slash = strchr(rest, '/');
    strings_add(&children, slash ? strndup(rest, slash - rest + 1) : strdup(rest));
  }
  strings_free(&keys);
  free(prefix);
  free(key);
  TF_SetStatus(status, TF_OK, "");
  return to_entries(&children, entries);
}

/* Every object and every directory implied by the keys that matches `glob`. */
static int get_matching_paths(const TF_Filesystem* fs, const char* glob, char*** entries,
                              TF_Status* status) {
  char* pattern = key_of(glob);
  size_t fixed = strcspn(pattern, "*?[\\{");
  char* prefix = strndup(pattern, fixed);
  char* slash = strrchr(prefix, '/');
  if (slash)
    slash[1] = '\0';
  else
    prefix[0] = '\0';
  Strings keys = list_keys(prefix);
  Strings found = {0};
  for (size_t i = 0; i < keys.size; ++i) {
    char* candidate = keys.items[i];
    size_t n = strlen(candidate);
    while (n > 0 && candidate[n - 1] == '/') candidate[--n] = '\0'; /* A marker. */
    /* The key and each of its parent directories below the listed prefix. */
    while (strlen(candidate) > strlen(prefix)) {
      if (fnmatch(pattern, candidate, FNM_PATHNAME) == 0)
        strings_add(&found, concat(PREFIX, candidate));
      char* parent = strrchr(candidate, '/');
      if (!parent) break;
      *parent = '\0';
    }
  }
  strings_free(&keys);
  free(prefix);
  free(pattern);
  TF_SetStatus(status, TF_OK, "");
  return to_entries(&found, entries);
}

static void* allocate(size_t size) { return calloc(1, size); }

void TF_InitPlugin(TF_FilesystemPluginInfo* info) {
  info->plugin_memory_allocate = allocate;
  info->plugin_memory_free = free;
  info->num_schemes = 1;
  info->ops = allocate(sizeof(TF_FilesystemPluginOps));
  TF_FilesystemPluginOps* ops = info->ops;
  TF_SetFilesystemVersionMetadata(ops);
  ops->scheme = strdup(SCHEME);

  TF_RandomAccessFileOps* raf = allocate(TF_RANDOM_ACCESS_FILE_OPS_SIZE);
  raf->cleanup = raf_cleanup;
  raf->read = raf_read;
  ops->random_access_file_ops = raf;

  TF_WritableFileOps* wf = allocate(TF_WRITABLE_FILE_OPS_SIZE);
  wf->cleanup = wf_cleanup;
  wf->append = wf_append;
  wf->tell = wf_tell;
  wf->flush = wf_sync; /* As on gs://: a flush uploads what was written so far. */
  wf->sync = wf_sync;
  wf->close = wf_sync;
  ops->writable_file_ops = wf;

  TF_FilesystemOps* f = allocate(TF_FILESYSTEM_OPS_SIZE);
  f->init = fs_init;
  f->cleanup = fs_cleanup;
  f->new_random_access_file = new_random_access_file;
  f->new_writable_file = new_writable_file;
  f->new_appendable_file = new_appendable_file;
  f->create_dir = create_dir;
  f->delete_file = delete_file;
  f->delete_dir = delete_dir;
  f->delete_recursively = delete_recursively;
  f->rename_file = rename_file;
  f->copy_file = copy_file;
  f->path_exists = path_exists;
  f->stat = fs_stat;
  f->is_directory = is_directory;
  f->get_file_size = get_file_size;
  f->translate_name = translate_name;
  f->get_children = get_children;
  f->get_matching_paths = get_matching_paths;
  ops->filesystem_ops = f;
}
