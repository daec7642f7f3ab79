/* json: cJSON (Debian's libcjson) plus helpers that turn a missing or mistyped field into a
 * status whose message names the file and the field. */
#ifndef SKEIN_JSON_H
#define SKEIN_JSON_H

#include <cJSON.h>

#include "base/base.h"

/* Parses the file at path; *out is owned by the caller (cJSON_Delete). */
sk_status json_load_file(const char *path, cJSON **out);
/* Prints obj (formatted) and writes it atomically to path. */
sk_status json_save_file(const char *path, const cJSON *obj);

/* Field readers. `what` names the object in messages (usually the file path). When the
 * field is absent: with `required` an error, else *out is left as it was and SK_OK returned.
 * A field present with the wrong type is always an error. */
sk_status json_get_int(const cJSON *obj, const char *key, bool required, const char *what, long *out);
sk_status json_get_double(const cJSON *obj, const char *key, bool required, const char *what, double *out);
sk_status json_get_bool(const cJSON *obj, const char *key, bool required, const char *what, bool *out);
/* *out points into obj (valid while obj lives). */
sk_status json_get_string(const cJSON *obj, const char *key, bool required, const char *what, const char **out);

#endif
