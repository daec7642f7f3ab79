/* json: file load/save and typed field readers over cJSON (see json.h). */
#include "base/json.h"

#include <math.h>
#include <string.h>

#include "base/file.h"

sk_status json_load_file(const char *path, cJSON **out) {
    char *text;
    size_t n;
    SK_TRY(file_read_all(path, &text, &n));
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithOpts(text, &end, 1);
    if (!obj) {
        size_t at = end ? (size_t)(end - text) : 0, line = 1, col = 1;
        for (size_t i = 0; i < at && i < n; i++, col++)
            if (text[i] == '\n') line++, col = 0;
        mem_free(text);
        return sk_fail(SK_EFORMAT, "%s: invalid JSON at line %zu, column %zu (byte %zu)", path, line, col, at);
    }
    mem_free(text);
    *out = obj;
    return SK_OK;
}

sk_status json_save_file(const char *path, const cJSON *obj) {
    char *text = cJSON_Print(obj);
    if (!text) return sk_fail(SK_ENOMEM, "out of memory printing %s", path);
    size_t n = strlen(text);
    text[n] = '\n'; /* cJSON allocates n+1 bytes: replace the NUL, write n+1 */
    sk_status st = file_write_atomic(path, text, n + 1);
    cJSON_free(text);
    return st;
}

static sk_status json_field(const cJSON *obj, const char *key, bool required, const char *what,
                            const cJSON **item) {
    *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (*item && cJSON_IsNull(*item)) *item = NULL;
    if (!*item && required) return sk_fail(SK_EFORMAT, "%s: missing field \"%s\"", what, key);
    return SK_OK;
}

sk_status json_get_int(const cJSON *obj, const char *key, bool required, const char *what, long *out) {
    const cJSON *it;
    SK_TRY(json_field(obj, key, required, what, &it));
    if (!it) return SK_OK;
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || v != floor(v) || fabs(v) > 9.0e15)
        return sk_fail(SK_EFORMAT, "%s: field \"%s\" must be an integer", what, key);
    *out = (long)v;
    return SK_OK;
}

sk_status json_get_double(const cJSON *obj, const char *key, bool required, const char *what, double *out) {
    const cJSON *it;
    SK_TRY(json_field(obj, key, required, what, &it));
    if (!it) return SK_OK;
    if (!cJSON_IsNumber(it)) return sk_fail(SK_EFORMAT, "%s: field \"%s\" must be a number", what, key);
    *out = it->valuedouble;
    return SK_OK;
}

sk_status json_get_bool(const cJSON *obj, const char *key, bool required, const char *what, bool *out) {
    const cJSON *it;
    SK_TRY(json_field(obj, key, required, what, &it));
    if (!it) return SK_OK;
    if (!cJSON_IsBool(it)) return sk_fail(SK_EFORMAT, "%s: field \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(it);
    return SK_OK;
}

sk_status json_get_string(const cJSON *obj, const char *key, bool required, const char *what, const char **out) {
    const cJSON *it;
    SK_TRY(json_field(obj, key, required, what, &it));
    if (!it) return SK_OK;
    if (!cJSON_IsString(it)) return sk_fail(SK_EFORMAT, "%s: field \"%s\" must be a string", what, key);
    *out = it->valuestring;
    return SK_OK;
}
