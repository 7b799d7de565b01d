/* `ember migrate`: drives a live migration between two ember processes through their API
 * sockets (PUT /migration/receive on the destination, PUT /migration/send on the source). */
#ifndef EMBER_MIGRATION_COMMAND_H
#define EMBER_MIGRATION_COMMAND_H

/* argv holds the options after "migrate"; returns the process's exit status. */
int migration_command(int argc, char **argv);

#endif
