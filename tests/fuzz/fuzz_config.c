/* libFuzzer target: the JSON configuration parser (the document of
 * --config-file, and through it every API body parser), then the mapping
 * onto the machine and the export back to JSON. The snapshot and migration
 * bodies too, and the migration URL they carry, as the API parses them. */
#include "api/config.h"
#include "migration/channel.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);
    struct api_config c;
    api_config_init(&c);
    if (api_config_parse_document(&c, text, size) == 0) {
        struct vm_config vm;
        vm_config_defaults(&vm);
        api_config_to_vm(&c, &vm);
        cJSON *back = api_config_json(&c);
        char *out = cJSON_PrintUnformatted(back);
        cJSON_Delete(back);
        free(out);
    }
    /* Each body parser on its own, as the API calls them. */
    cJSON *j = cJSON_ParseWithLength(text, size);
    if (j) {
        struct api_drive_update u;
        struct api_net_update nu;
        struct api_logger l;
        enum api_action act;
        bool paused;
        char *path = NULL;
        api_put_machine_config(&c, j, true);
        api_put_drive(&c, NULL, j);
        api_put_net(&c, NULL, j);
        api_put_entropy(&c, j);
        api_put_vsock(&c, j);
        api_parse_action(j, &act);
        api_parse_vm_state(j, &paused);
        if (api_parse_drive_update("d", j, &u) == 0)
            free(u.path);
        api_parse_net_update("eth0", j, &nu);
        if (api_parse_logger(j, &l) == 0) {
            free(l.log_path);
            free(l.module);
        }
        if (api_parse_metrics(j, &path) == 0)
            free(path);
        struct api_snapshot_create sc;
        struct api_snapshot_load sl;
        struct api_migration_send ms;
        struct api_migration_receive mr;
        if (api_parse_snapshot_create(j, &sc) == 0 &&
            (!sc.snapshot_path[0] || !sc.mem_file_path[0]))
            abort();
        if (api_parse_snapshot_load(j, &sl) == 0 &&
            (sl.overrides.nnet > API_MAX_NET_OVERRIDES || !sl.backend_path[0]))
            abort();
        const char *url = NULL;
        if (api_parse_migration_send(j, &ms) == 0)
            url = ms.destination_url;
        if (api_parse_migration_receive(j, &mr) == 0) {
            if (mr.overrides.nnet > API_MAX_NET_OVERRIDES)
                abort();
            url = mr.receiver_url;
        }
        struct migration_url mu;
        if (url && migration_parse_url(url, &mu) == 0 &&
            (strlen(mu.path) >= sizeof(mu.path) || strlen(mu.host) >= sizeof(mu.host) ||
             strlen(mu.port) >= sizeof(mu.port) || (mu.tcp && (!mu.host[0] || !mu.port[0])) ||
             (!mu.tcp && !mu.path[0])))
            abort();
        cJSON_Delete(j);
    }
    api_config_free(&c);
    free(text);
    return 0;
}
