"""What WhatsApp writes itself into an exported chat, per language: data, not code.

One table per language. Each string is kept as WhatsApp spells it; matching (whatsapp.py) ignores case,
direction marks, the kind of quote and space, and a trailing full stop. Kinds:

  media      the whole body stands for a photo/video/sticker... left out of the export ("without media")
  view_once  the whole body stands for a view-once photo/video/voice message
  deleted    the whole body says a message was deleted
  calls      the whole body is a (missed) call
  notices    the body starts with this sentence (encryption notices; later sentences vary by version)
  events     group and chat events; `{}` stands for a name, a number or a group subject
  edited     appended to an edited message's text (the text is kept, the marker removed)
  attached   Android `FILE (file attached)` / iOS `<attached: FILE>` words (media exported with the chat)
  poll       the header word of a poll (`POLL:`) and of each option line (`OPTION: tacos (1 vote)`)
  chat_file  the exported file's name, `{}` being the chat (the other person or the group)

Where the strings come from (the short tags are used in the comments below):

  iOS    WhatsApp iOS 22.24.81 Localizable.strings, as kept in starkdmi/whats_json
         tool/patterns_generator/data/iOS Localizables/<LANG>.strings (keys n*sq0, qBly], S?EA5, _i3PG, ...)
  A17    WhatsApp Android 2.17 res/values-<lang>/strings.xml, as kept in HassanSardar/GBWhatsApp_Raw
         (keys email_media_omitted, email_file_attached, revoked_msg_incoming, group_created_by_name, ...,
         email_conversation_subject)
  real   real exports in starkdmi/whats_json test/data (languages/*.txt, android/*.txt)
  brief  examples from real exports quoted in issue #22 (German, Spanish)
  CA     mlomb/chat-analytics pipeline/parse/parsers/WhatsApp.ts (Android media placeholders per language)
  poll   Pustur/whatsapp-chat-parser-website issue #43 (an Italian chat whose poll lines are in English)
  seen   found verbatim, with the same spelling, in several public WhatsApp parsers on GitHub by exact-string
         search (the search does not name the repositories): weaker than the tags above
  INFERRED  not found in any source; a guess from the other strings of that language, said so each time

WhatsApp rewords these strings between versions (the Android `<Media omitted>` equivalents of 2017 differ
from today's), so a table keeps old and new spellings side by side. What no table knows is still caught
by the structural rules in whatsapp.py (a line without `Name: `, an iOS line marked with U+200E, a short
`<...>` body many people send) and shown in the import summary, so a missing language is visible.
"""

from __future__ import annotations

EN = {  # English
    "media": ["<Media omitted>",  # A17, real
              "image omitted", "video omitted", "audio omitted", "sticker omitted", "GIF omitted",  # iOS
              "Contact card omitted", "document omitted",  # iOS
              "<Video note omitted>"],  # seen
    "view_once": ["<View once voice message omitted>",  # seen
                  "null"],  # real (Android writes `null` for an opened view-once photo)
    "deleted": ["This message was deleted", "You deleted this message",  # iOS, A17, real
                "This message was deleted by an admin", "You deleted this message as admin",  # iOS
                "This message was deleted for everyone", "You deleted this message for everyone"],  # A17
    "calls": ["Missed voice call", "Missed video call", "Missed group voice call",  # iOS, real
              "Missed group video call"],  # iOS
    "notices": ["Messages and calls are end-to-end encrypted",  # iOS, real
                "Messages and calls are now end-to-end encrypted",  # iOS
                "Messages to yourself are end-to-end encrypted",  # iOS
                "Messages to this chat and calls are now secured with end-to-end encryption",  # A17
                "Messages to this group are now secured with end-to-end encryption"],  # A17
    "events": ['{} created group "{}"', '{} left', '{} added you', '{} added {}', '{} removed you',  # iOS, A17
               '{} removed {}', "{} joined using this group's invite link", '{} changed the subject to "{}"',
               '{} changed the subject from "{}" to "{}"', "{} changed this group's icon",  # A17, real
               "{} deleted this group's icon", '{} changed the group description',
               '{} turned on disappearing messages', '{} turned off disappearing messages',
               '{} updated the message timer', "{} changed this group's settings{}",  # real
               'Your security code with {} changed', "{}'s security code changed",  # iOS, A17
               '{} changed their phone number{}', "You're now an admin", "You're no longer an admin",
               '{} was added', '{} was removed', 'You were added', 'You were removed'],
    "edited": ["<This message was edited>"],  # seen (many parsers)
    "attached": ["file attached", "attached"],  # A17 / iOS
    "poll": ["POLL", "OPTION"],  # poll
    "chat_file": ["WhatsApp Chat with {}", "WhatsApp Chat - {}"],  # A17; iOS zip/folder: real, CA
}

ES = {  # Spanish
    "media": ["<Multimedia omitido>",  # brief, CA
              "<Archivo omitido>",  # A17
              "imagen omitida", "Video omitido", "audio omitido", "sticker omitido", "GIF omitido",  # iOS
              "Tarjeta de contacto omitida", "documento omitido"],  # iOS
    "view_once": [],
    "deleted": ["Se eliminó este mensaje", "Eliminaste este mensaje",  # brief, iOS
                "Este mensaje fue eliminado",  # A17
                "Un admin. eliminó este mensaje"],  # iOS
    "calls": ["Llamada perdida", "Videollamada perdida", "Llamada grupal perdida",  # iOS
              "Videollamada grupal perdida", "Llamada de voz perdida"],  # iOS / A17
    "notices": ["Los mensajes y las llamadas están cifrados de extremo a extremo",  # iOS; real in
                # lautarobock/whats-flow src/app/app.component.ts
                "Ahora los mensajes y las llamadas están cifrados de extremo a extremo",  # iOS
                "Los mensajes enviados a este mismo número están cifrados de extremo a extremo",  # iOS
                "Los mensajes y llamadas en este chat ahora están protegidos con cifrado de extremo a extremo",
                "Los mensajes en este grupo ahora están protegidos con cifrado de extremo a extremo"],  # A17
    "events": ['{} creó el grupo "{}"', 'Creaste el grupo "{}"', '{} salió del grupo', 'Saliste del grupo',
               '{} salió', 'Saliste', '{} te añadió', 'Añadiste a {}', '{} añadió a {}', '{} te eliminó',
               'Eliminaste a {}', '{} eliminó a {}', 'Se eliminó a {}', 'Se añadió a {}', 'Se te añadió al grupo',
               '{} se unió usando el enlace de invitación de este grupo',
               'Te uniste mediante el enlace de invitación de este grupo',
               '{} cambió el asunto a "{}"', 'Cambiaste el asunto a "{}"', '{} cambió el ícono de este grupo',
               '{} cambió el icono de este grupo', '{} cambió la descripción del grupo',
               '{} activó los mensajes temporales', '{} desactivó los mensajes temporales',
               'Cambió tu código de seguridad con {}', 'El código de seguridad de {} cambió',
               '{} cambió su número de teléfono', 'Ahora eres admin. del grupo',
               'Ahora eres un administrador'],  # iOS, A17 (brief: `Diego creó el grupo "Viaje: Lisboa"`)
    "edited": ["<Se editó este mensaje.>"],  # brief
    "attached": ["archivo adjunto",  # real (lautarobock/whats-flow)
                 "archivo adjuntado", "adjunto"],  # A17 / iOS
    "poll": ["ENCUESTA", "OPCIÓN"],  # seen (one parser only; the Italian export in `poll` kept English)
    "chat_file": ["Chat de WhatsApp con {}"],  # A17, CA
}

PT_BR = {  # Portuguese (Brazil)
    "media": ["<Mídia oculta>",  # seen
              "<Mídia omitida>",  # A17 pt-rBR, CA
              "imagem ocultada", "vídeo omitido", "áudio ocultado", "figurinha omitida", "GIF omitido",  # iOS
              "Cartão do contato omitido", "documento omitido"],  # iOS
    "view_once": ["<Arquivo não revelado>"],  # seen (one parser only)
    "deleted": ["Mensagem apagada",  # iOS
                "Esta mensagem foi apagada", "Você apagou esta mensagem",  # A17 pt-rBR
                "Mensagem apagada por um admin"],  # iOS
    "calls": ["Chamada de voz perdida", "Chamada de vídeo perdida", "Chamada de voz em grupo perdida",  # iOS
              "Chamada de vídeo em grupo perdida"],  # iOS
    "notices": ["As mensagens e as chamadas são protegidas com a criptografia de ponta a ponta",  # iOS
                "As mensagens e as chamadas agora são protegidas com a criptografia de ponta a ponta",  # iOS
                "As mensagens que você envia nesta conversa são protegidas com a criptografia de ponta a ponta",
                "As mensagens e chamadas desta conversa estão agora seguras com criptografia de ponta-a-ponta"],
    "events": ['{} criou o grupo "{}"', 'Você criou o grupo "{}"', '{} saiu', 'Você saiu', '{} adicionou você',
               'Você adicionou {}', '{} adicionou {}', '{} removeu você', 'Você removeu {}', '{} removeu {}',
               '{} foi removido(a)', '{} foi removido', '{} foi adicionado', 'Usuário adicionado: {}',
               '{} entrou usando o link de convite deste grupo',
               'Você entrou usando o link de convite deste grupo', '{} mudou o nome do grupo para "{}"',
               '{} alterou o nome do grupo para "{}"', '{} mudou a imagem deste grupo',
               '{} mudou a descrição do grupo', '{} ativou as mensagens temporárias',
               '{} desativou as mensagens temporárias', 'Seu código de segurança com {} mudou',
               'O código de segurança de {} mudou', '{} mudou de número de telefone',
               'Você agora é um admin do grupo'],  # iOS PT-BR, A17 pt-rBR
    "edited": ["<Mensagem editada>"],  # seen
    "attached": ["arquivo anexado", "anexado"],  # A17 pt-rBR / iOS
    "poll": ["ENQUETE", "OPÇÃO"],  # seen (one parser only)
    "chat_file": ["Conversa do WhatsApp com {}"],  # A17 pt-rBR, brief, CA
}

PT_PT = {  # Portuguese (Portugal)
    "media": ["<Multimédia omitido>",  # seen (one parser only)
              "<Ficheiro não revelado>",  # A17 pt, CA
              "imagem não revelada", "vídeo não revelado", "ficheiro de áudio não revelado",  # iOS
              "sticker não revelado", "GIF não revelada", "Contacto não revelado", "documento não revelado"],
    "view_once": [],
    "deleted": ["Esta mensagem foi apagada", "Apagou esta mensagem",  # iOS
                "Esta mensagem foi apagada pelo remetente",  # A17 pt
                "Esta mensagem foi apagada por um/a administrador/a"],  # iOS
    "calls": ["Chamada de voz perdida", "Videochamada perdida", "Chamada de voz em grupo perdida",  # iOS
              "Videochamada em grupo perdida"],  # iOS
    "notices": ["As mensagens e chamadas são encriptadas ponto a ponto",  # iOS
                "As mensagens e chamadas estão agora encriptadas ponto a ponto",  # iOS
                "As mensagens que envia para si são encriptadas ponto a ponto",  # iOS
                "Nesta conversa, as mensagens que enviar e as chamadas que efetuar são completamente encriptadas",
                "As mensagens que enviar a este grupo passarão a ser completamente encriptadas"],  # A17 pt
    "events": ['{} criou o grupo "{}"', 'Criou o grupo "{}"', '{} saiu do grupo', 'Saiu do grupo',
               'Foi adicionado/a a este grupo por {}', 'Adicionou {} a este grupo', '{} adicionou {} a este grupo',
               '{} adicionou {}', 'Foi removido do grupo por {}', 'Removeu {} do grupo', '{} removeu {} do grupo',
               '{} removeu {} deste grupo', 'O participante {} foi removido', '{} foi adicionado/a a este grupo',
               '{} foi adicionado a este grupo', '{} entrou no grupo através da ligação de convite',
               'Entrou no grupo através da ligação de convite', 'O título do grupo foi alterado para "{}" por {}',
               'Alterou o título do grupo para "{}"', '{} alterou o assunto da conversa para "{}"',
               '{} alterou o ícone deste grupo', '{} alterou a descrição do grupo',
               '{} ativou as mensagens temporárias', '{} desativou as mensagens temporárias',
               'O seu código de segurança partilhado com {} mudou', 'O código de segurança de {} foi alterado',
               '{} mudou de número de telemóvel', 'Passou a ser administrador/a deste grupo',
               'Passou a ser administrador deste grupo'],  # iOS PT-PT, A17 pt
    "edited": ["<Esta mensagem foi editada>"],  # seen (one parser only)
    "attached": ["ficheiro anexado", "anexo"],  # A17 pt / iOS
    "poll": ["SONDAGEM", "OPÇÃO"],  # seen (one parser only)
    "chat_file": ["Conversa no WhatsApp com {}"],  # A17 pt, CA
}

DE = {  # German
    "media": ["<Medien ausgeschlossen>",  # brief, CA
              "<Medien weggelassen>",  # A17
              "Bild weggelassen", "Video weggelassen", "Audio weggelassen", "Sticker weggelassen",  # iOS, real
              "GIF weggelassen", "Kontaktkarte ausgelassen", "Dokument weggelassen"],  # iOS, real
    "view_once": [],
    "deleted": ["Diese Nachricht wurde gelöscht", "Du hast diese Nachricht gelöscht",  # brief, iOS, A17, real
                "Diese Nachricht wurde von einem*einer Admin gelöscht"],  # iOS
    "calls": ["Verpasster Sprachanruf", "Verpasster Videoanruf", "Verpasster Gruppen-Sprachanruf",  # iOS, A17
              "Verpasster Gruppen-Videoanruf"],  # iOS
    "notices": ["Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt",  # iOS, real
                "Nachrichten und Anrufe sind jetzt Ende-zu-Ende-verschlüsselt",  # iOS
                "Nachrichten an dich selbst sind Ende-zu-Ende-verschlüsselt",  # iOS
                "Nachrichten in diesem Chat sowie Anrufe sind jetzt mit Ende-zu-Ende-Verschlüsselung geschützt",
                "Nachrichten an diese Gruppe sind jetzt mit Ende-zu-Ende-Verschlüsselung geschützt"],  # A17
    "events": ['{} hat die Gruppe "{}" erstellt', 'Du hast die Gruppe "{}" erstellt', '{} hat die Gruppe verlassen',
               'Du hast die Gruppe verlassen', '{} hat dich hinzugefügt', 'Du hast {} hinzugefügt',
               '{} hat {} hinzugefügt', '{} hat dich entfernt', 'Du hast {} entfernt', '{} hat {} entfernt',
               '{} wurde entfernt', '{} wurde hinzugefügt', 'Du wurdest hinzugefügt',
               '{} ist der Gruppe mit dem Einladungslink beigetreten',
               '{} ist dieser Gruppe mit dem Einladungslink beigetreten',
               'Du bist der Gruppe mit dem Einladungslink beigetreten', '{} hat den Betreff zu "{}" geändert',
               'Du hast den Betreff zu "{}" geändert', '{} hat das Gruppenbild geändert',
               '{} hat die Gruppenbeschreibung geändert', '{} hat selbstlöschende Nachrichten aktiviert',
               '{} hat selbstlöschende Nachrichten deaktiviert', 'Deine Sicherheitsnummer für {} hat sich geändert',
               'Die Sicherheitsnummer von {} hat sich geändert', '{} hat die Telefonnummer gewechselt',
               'Du bist jetzt ein*e Admin', 'Du bist jetzt ein Admin'],  # iOS, A17
    "edited": ["<Diese Nachricht wurde bearbeitet>"],  # brief
    "attached": ["Datei angehängt", "Anhang"],  # A17 / iOS
    "poll": ["UMFRAGE", "OPTION"],  # seen (one parser only)
    "chat_file": ["WhatsApp-Chat mit {}",  # brief
                  "WhatsApp Chat mit {}"],  # A17, CA
}

FR = {  # French
    "media": ["<Médias omis>",  # CA, seen
              "<Fichier omis>",  # A17
              "image absente", "vidéo absente", "audio omis", "sticker omis", "GIF retiré",  # iOS
              "Fiche contact manquante", "document manquant"],  # iOS
    "view_once": [],
    "deleted": ["Ce message a été supprimé", "Vous avez supprimé ce message",  # iOS, A17
                "Ce message a été supprimé par un ou une admin"],  # iOS
    "calls": ["Appel vocal manqué", "Appel vidéo manqué", "Appel vocal de groupe manqué",  # iOS, A17
              "Appel vidéo de groupe manqué"],  # iOS
    "notices": ["Les messages et les appels sont chiffrés de bout en bout",  # iOS
                "Les messages et les appels sont désormais chiffrés de bout en bout",  # iOS
                "Les messages que vous recevez sont chiffrés de bout en bout",  # iOS
                "Les messages envoyés dans cette discussion et les appels sont désormais protégés",  # A17
                "Les messages envoyés dans ce groupe sont désormais protégés"],  # A17
    "events": ['{} a créé le groupe "{}"', 'Vous avez créé le groupe "{}"', '{} est parti·e', '{} est parti',
               'Vous êtes parti·e', 'Groupe quitté', '{} vous a ajouté·e', '{} vous a ajouté',
               'Vous avez ajouté {}', '{} a ajouté {}', '{} vous a retiré·e', 'Vous avez retiré {}',
               '{} a retiré {}', '{} a été retiré·e', '{} a été retiré(e)', '{} a été ajouté·e',
               '{} a été ajouté(e)', "{} a rejoint ce groupe grâce à son lien d'invitation",
               "{} a intégré ce groupe grâce au lien d'invitation",
               "Vous avez rejoint le groupe grâce à son lien d'invitation", '{} a remplacé le sujet par "{}"',
               '{} a modifié le sujet en "{}"', 'Vous avez changé le sujet en "{}"',
               "{} a changé l'icône de ce groupe", '{} a changé la description du groupe',
               '{} a activé les messages éphémères', '{} a désactivé les messages éphémères',
               'Votre code de sécurité avec {} a changé', 'Le code de sécurité de {} a changé',
               '{} a changé de numéro de téléphone', 'Vous êtes désormais admin',
               'Vous êtes maintenant un administrateur'],  # iOS, A17
    "edited": ["<Ce message a été modifié>"],  # seen
    "attached": ["fichier joint", "pièce jointe"],  # A17 / iOS
    "poll": ["SONDAGE", "OPTION"],  # seen (one parser only)
    "chat_file": ["Discussion WhatsApp avec {}"],  # A17, CA
}

IT = {  # Italian
    "media": ["<Media omessi>",  # CA, seen
              "<Media omesso>",  # A17
              "immagine omessa", "video omesso", "audio omesso", "sticker non incluso", "GIF esclusa",  # iOS
              "Scheda contatto omessa", "documento omesso"],  # iOS
    "view_once": [],
    "deleted": ["Questo messaggio è stato eliminato", "Hai eliminato questo messaggio",  # iOS, A17
                "Questo messaggio è stato eliminato da un amministratore"],  # iOS
    "calls": ["Chiamata vocale persa", "Videochiamata persa", "Chiamata vocale di gruppo persa",  # iOS, A17
              "Videochiamata di gruppo persa"],  # iOS
    "notices": ["I messaggi e le chiamate sono crittografati end-to-end",  # iOS
                "I messaggi che ti invii sono crittografati end-to-end",  # iOS
                "I messaggi inviati a questa chat sono ora protetti con la crittografia end-to-end",  # A17
                "I messaggi inviati a questo gruppo sono ora protetti con la crittografia end-to-end"],  # A17
    "events": ['{} ha creato il gruppo "{}"', 'Hai creato il gruppo "{}"', '{} ha abbandonato', 'Hai abbandonato',
               '{} ti ha aggiunto', 'Hai aggiunto {}', '{} ha aggiunto {}', '{} ti ha rimosso', 'Hai rimosso {}',
               '{} ha rimosso {}', '{} non fa più parte del gruppo', "È stato aggiunto l'utente {}",
               '{} è stato aggiunto', '{} è stato rimosso', "{} ha usato il link d'invito per entrare nel gruppo",
               "{} è entrato usando il link d'invito al gruppo",
               "Hai usato il link d'invito per entrare nel gruppo", '{} ha cambiato l\'oggetto in "{}"',
               'Hai cambiato l\'oggetto in "{}"', "{} ha cambiato l'immagine di questo gruppo",
               "{} ha cambiato l'immagine del gruppo", '{} ha cambiato la descrizione del gruppo',
               '{} ha attivato i messaggi effimeri', '{} ha disattivato i messaggi effimeri',
               'Il tuo codice di sicurezza con {} è cambiato', 'Il codice sicurezza di {} è cambiato',
               '{} ha cambiato numero', 'Ora sei un amministratore'],  # iOS, A17
    "edited": ["<Questo messaggio è stato modificato>"],  # seen
    "attached": ["file allegato", "allegato"],  # A17 / iOS
    "poll": ["SONDAGGIO", "OPZIONE"],  # seen (one parser only); an Italian chat in `poll` had POLL/OPTION
    "chat_file": ["Chat WhatsApp con {}"],  # A17, CA
}

NL = {  # Dutch
    "media": ["<Media weggelaten>",  # A17, CA, seen
              "afbeelding weggelaten", "video weggelaten", "audio weggelaten", "sticker weggelaten",  # iOS
              "GIF weggelaten", "Visitekaartje weggelaten", "document weggelaten"],  # iOS
    "view_once": [],
    "deleted": ["Dit bericht is verwijderd", "U hebt dit bericht verwijderd",  # iOS, A17
                "Dit bericht is verwijderd door een beheerder",  # iOS
                "Je hebt dit bericht verwijderd"],  # INFERRED (informal "je" form of newer versions)
    "calls": ["Gemist spraakgesprek", "Gemist videogesprek", "Gemist groepsgesprek",  # iOS
              "Gemist groepsvideogesprek", "Gemiste spraakoproep", "Gemiste video-oproep"],  # iOS / A17
    "notices": ["Berichten en gesprekken worden end-to-end versleuteld",  # iOS
                "Berichten en gesprekken worden nu end-to-end versleuteld",  # iOS
                "Berichten aan uzelf worden end-to-end versleuteld",  # iOS
                "Berichten en oproepen in deze chat zijn nu beveiligd met end-to-end encryptie",  # A17
                "Berichten die naar deze groep worden verzonden, zijn nu beveiligd met end-to-end encryptie"],
    "events": ['{} heeft de groep "{}" gemaakt', "{} heeft de groep '{}' aangemaakt", "U hebt de groep '{}' gemaakt",
               "{} heeft het onderwerp gewijzigd naar '{}'", "U hebt het onderwerp gewijzigd naar '{}'",  # A17
               'U hebt de groep "{}" gemaakt',
               '{} heeft de groep {} gemaakt', '{} heeft de groep verlaten', 'U hebt de groep verlaten',
               '{} heeft u toegevoegd', 'U hebt {} toegevoegd', '{} heeft {} toegevoegd', '{} heeft u verwijderd',
               'U hebt {} verwijderd', '{} heeft {} verwijderd', '{} is verwijderd', '{} is toegevoegd',
               'U bent toegevoegd', '{} is deelnemer geworden via de uitnodigingslink van deze groep',
               'U bent deelnemer geworden via de uitnodigingslink van deze groep',
               '{} heeft het onderwerp gewijzigd naar "{}"', 'U hebt het onderwerp gewijzigd naar "{}"',
               '{} heeft de groepsafbeelding gewijzigd', '{} heeft het groepsonderwerp gewijzigd',
               '{} heeft berichten met vervaldatum ingeschakeld', '{} heeft berichten met vervaldatum uitgeschakeld',
               'Uw beveiligingscode voor {} is gewijzigd', "{}'s beveiligingscode is gewijzigd",
               '{} heeft een nieuw telefoonnummer', 'U bent nu een beheerder'],  # iOS, A17
    "edited": ["<Dit bericht is bewerkt>"],  # seen (one parser only)
    "attached": ["bestand bijgevoegd", "bijgevoegd"],  # A17 / iOS
    "poll": ["PEILING", "OPTIE"],  # seen (one parser only)
    "chat_file": ["WhatsApp-chat met {}"],  # A17
}

RU = {  # Russian
    "media": ["<Без медиафайлов>",  # real, CA
              "<Файл пропущен>",  # A17
              "изображение отсутствует", "видео отсутствует", "аудиофайл отсутствует", "стикер не добавлен",  # iOS
              "GIF отсутствует", "Карточка контакта отсутствует", "документ отсутствует"],  # iOS
    "view_once": [],
    "deleted": ["Данное сообщение удалено", "Вы удалили данное сообщение", "Вы удалили это сообщение",  # iOS, real
                "Данное сообщение удалено админом",  # iOS
                "Это сообщение удалено"],  # seen (one parser only)
    "calls": ["Пропущенный аудиозвонок", "Пропущенный видеозвонок", "Пропущенный групповой аудиозвонок",  # iOS, real
              "Пропущенный групповой видеозвонок"],  # iOS
    "notices": ["Сообщения и звонки защищены сквозным шифрованием",  # iOS, real
                "Сообщения и звонки теперь защищены сквозным шифрованием",  # iOS
                "Сообщения для себя защищены сквозным шифрованием",  # iOS
                "Сообщения в данном чате и звонки теперь защищены сквозным шифрованием",  # A17
                "Сообщения в данной группе теперь защищены сквозным шифрованием"],  # A17
    "events": ['{} создал(-а) группу "{}"', 'Вы создали группу "{}"', '{} покинул(-а) группу', 'Вы покинули группу',
               '{} добавил(-а) вас', 'Вы добавили контакт {}', 'Вы добавили {}', '{} добавил(-а) {}',
               '{} удалил(-а) вас', 'Вы удалили контакт {}', 'Вы удалили {}', '{} удалил(-а) {}', '{} удален(-а)',
               '{} был(-а) удален(-а)', '{} добавлен(-а)', '{} был(-а) добавлен(-а)', 'Вы были добавлены',
               '{} вступил(-а) в группу, используя приглашение', 'Вы вступили в группу, используя приглашение',
               '{} присоединился(-ась) к группе, используя приглашение', '{} изменил(-а) тему на "{}"',
               'Вы изменили тему на "{}"', '{} изменил(-а) картинку группы', '{} изменил(-а) описание группы',
               '{} включил(-а) исчезающие сообщения', '{} отключил(-а) исчезающие сообщения',
               'Ваш код безопасности с контактом {} изменился', 'Код безопасности пользователя {} изменился',
               '{} сменил(-а) номер телефона', 'Теперь вы админ'],  # iOS, A17
    "edited": ["<Это сообщение изменено>"],  # seen (one parser only)
    "attached": ["файл добавлен", "прикреплено"],  # real, A17 / iOS
    "poll": ["ОПРОС", "ВАРИАНТ"],  # INFERRED
    "chat_file": ["Чат WhatsApp с контактом {}",  # real (file name in starkdmi/whats_json test/data/android)
                  "Чат WhatsApp с {}"],  # A17, CA
}

TR = {  # Turkish
    "media": ["<Medya dahil edilmedi>",  # CA, seen
              "<Medya atlanmış>",  # A17
              "görüntü dahil edilmedi", "video dahil edilmedi", "ses dahil edilmedi", "Çıkartma dahil edilmedi",
              "GIF dahil edilmedi", "Kişi kartı dahil edilmedi", "belge dahil edilmedi"],  # iOS
    "view_once": [],
    "deleted": ["Bu mesaj silindi", "Bu mesajı sildiniz",  # iOS, A17
                "Bu mesaj bir yönetici tarafından silindi"],  # iOS
    "calls": ["Cevapsız sesli arama", "Cevapsız görüntülü arama", "Cevapsız sesli grup araması",  # iOS, A17
              "Cevapsız görüntülü grup araması"],  # iOS
    "notices": ["Mesajlar ve aramalar uçtan uca şifrelidir",  # iOS
                "Mesajlar ve aramalar artık uçtan uca şifrelidir",  # iOS
                "Kendinize gönderdiğiniz mesajlar uçtan uca şifrelidir",  # iOS
                "Bu sohbete gönderdiğiniz mesajlar ve yaptığınız aramalar artık uçtan uca şifreleme ile",  # A17
                "Bu gruba gönderdiğiniz mesajlar artık uçtan uca şifreleme ile korunmaktadır"],  # A17
    "events": ['{} "{}" grubunu oluşturdu', '{}, "{}" grubunu oluşturdu', '"{}" grubunu oluşturdunuz', '{} ayrıldı',
               'Ayrıldınız', '{} sizi ekledi', '{} kişisini eklediniz', '{}, {} kişisini ekledi', '{} sizi çıkardı',
               '{} kişisini çıkardınız', '{}, {} kişisini çıkardı', '{} çıkarıldı', '{} eklendi', 'Eklendiniz',
               '{} bu grubun davet bağlantısını kullanarak katıldı', 'Grubun davet bağlantısıyla katıldınız',
               '{} konuyu "{}" olarak değiştirdi', '{} grup konusunu "{}" olarak değiştirdi',
               'Grup konusunu "{}" olarak değiştirdiniz', '{} bu grubun simgesini değiştirdi',
               '{} grup açıklamasını değiştirdi', '{} süreli mesajları etkinleştirdi',
               '{} süreli mesajları devre dışı bıraktı', '{} ile aranızdaki güvenlik kodu değişti',
               '{} kişisinin güvenlik kodu değişti', '{} telefon numarasını yeni bir numaraya değiştirdi',
               'Artık yöneticisiniz'],  # iOS, A17
    "edited": ["<Bu mesaj düzenlendi>"],  # seen
    "attached": ["dosya ekli"],  # A17 (iOS writes `<FILE eklendi>`, matched in whatsapp.py)
    "poll": ["ANKET", "SEÇENEK"],  # ANKET seen (one parser only); SEÇENEK INFERRED
    "chat_file": ["{} ile WhatsApp Sohbeti"],  # A17
}

ID = {  # Indonesian
    "media": ["<Media tidak disertakan>",  # A17, CA
              "gambar tidak disertakan", "video tidak disertakan", "audio tidak disertakan",  # iOS
              "stiker tidak disertakan", "GIF tidak disertakan", "Kartu kontak tidak disertakan",  # iOS
              "dokumen tidak disertakan"],  # iOS
    "view_once": [],
    "deleted": ["Pesan ini dihapus", "Anda menghapus pesan ini",  # iOS
                "Pesan ini telah dihapus", "Anda telah menghapus pesan ini",  # A17
                "Pesan ini dihapus oleh admin"],  # iOS
    "calls": ["Panggilan suara tak terjawab", "Panggilan video tak terjawab",  # iOS, A17
              "Panggilan suara grup tak terjawab", "Panggilan video grup tak terjawab"],  # iOS
    "notices": ["Pesan dan panggilan terenkripsi secara end-to-end",  # iOS
                "Pesan dan panggilan kini terenkripsi secara end-to-end",  # iOS
                "Pesan kepada diri sendiri terenkripsi secara end-to-end",  # iOS
                "Pesan-pesan yang dikirimkan ke chat ini dan panggilan kini diamankan dengan enkripsi end-to-end",
                "Pesan-pesan yang dikirimkan ke grup ini kini diamankan dengan enkripsi end-to-end"],  # A17
    "events": ['{} membuat grup "{}"', 'Anda membuat grup "{}"', '{} keluar', 'Anda keluar', '{} menambahkan Anda',
               'Anda menambahkan {}', '{} menambahkan {}', '{} mengeluarkan Anda', 'Anda mengeluarkan {}',
               '{} mengeluarkan {}', '{} dikeluarkan', '{} ditambahkan', '{} telah ditambahkan',
               '{} telah dikeluarkan', 'Anda telah ditambahkan',
               '{} bergabung menggunakan tautan undangan grup ini',
               '{} telah bergabung menggunakan tautan undangan grup ini',
               'Anda bergabung menggunakan tautan undangan grup ini', '{} telah mengubah subjek menjadi "{}"',
               '{} mengubah subjek menjadi "{}"', 'Anda mengubah subjek menjadi "{}"', '{} mengubah ikon grup ini',
               '{} telah mengubah ikon grup ini', '{} mengubah deskripsi grup', '{} menyalakan pesan sementara',
               '{} mematikan pesan sementara', 'Kode keamanan Anda dengan {} telah berubah',
               'Kode keamanan {} berubah', '{} telah mengganti nomor teleponnya ke nomor baru',
               'Anda sekarang admin', 'Anda sekarang adalah admin'],  # iOS, A17
    "edited": ["<Pesan ini diedit>"],  # seen
    "attached": ["file terlampir", "terlampir"],  # A17 / iOS
    "poll": ["POLING", "OPSI"],  # INFERRED
    "chat_file": ["Chat WhatsApp dengan {}"],  # A17
}

AR = {  # Arabic
    "media": ["<تم استبعاد الوسائط>",  # A17, CA
              "لم يتم إدراج الصورة", "لم يتم إدراج الفيديوهات", "لم يتم إدراج المقاطع الصوتية",  # iOS, real
              "تم حذف الملصقات", "لم يتم إدراج صورة GIF", "لم يتم إدراج بطاقة جهة اتصال",  # iOS, real
              "لم يتم إدراج المستند"],  # iOS, real
    "view_once": [],
    "deleted": ["تم حذف هذه الرسالة", "لقد حذَفت هذه الرسالة",  # iOS, real
                "أنت حذفت هذه الرسالة",  # A17
                "حذف أحد المشرفين هذه الرسالة"],  # iOS
    "calls": ["مكالمة صوتية فائتة", "مكالمة فيديو فائتة", "مكالمة صوتية جماعية فائتة",  # iOS, A17
              "مكالمة فيديو جماعية فائتة"],  # iOS
    "notices": ["الرسائل والمكالمات مشفرة تمامًا بين الطرفين",  # iOS, real
                "أصبحت الرسائل والمكالمات مشفرة تمامًا الآن",  # iOS
                "الرسائل التي ترسلها لنفسك مشفرة تمامًا بين الطرفين",  # iOS
                "باتت الرسائل التي ترسلها إلى هذه الدردشة والمكالمات التي تجريها ضمنها محمية",  # A17
                "باتت الرسائل التي ترسلها إلى هذه المجموعة محمية"],  # A17
    "events": ['{} أنشأ مجموعة "{}"', 'أنت أنشأت مجموعة "{}"', '{} غادر المجموعة', '{} غادر', 'أنت غادرت',
               '{} أضافك', 'أنت أضفت {}', '{} أضاف {}', '{} أزالك', 'أنت أزلت {}', '{} أزال {}', 'تمت إزالة {}',
               'تمت إضافة {}', 'تمت إضافتك', '{} انضم إلى المجموعة عبر استخدام رابط الدعوة الخاص بها',
               'لقد انضممت إلى المجموعة باستخدام رابط الدعوة الخاص بها', '{} غيّر اسم المجموعة إلى "{}"',
               'أنت غيّرت اسم المجموعة إلى "{}"', '{} غيّر أيقونة هذه المجموعة', '{} غيّر وصف المجموعة',
               'فعّلت جهة الاتصال {} خاصية الرسائل ذاتية الاختفاء',
               'أوقفت جهة الاتصال {} تفعيل خاصية الرسائل ذاتية الاختفاء', 'تغيّر رمز أمانك المُستخدَم مع {}',
               'تغير رمز أمان {}', '{} غيّر رقم هاتفه إلى رقم جديد', 'أصبحت الآن مشرفاً'],  # iOS, A17
    "edited": [],  # not found in any source: the summary's unknown-marker list shows it
    "attached": ["الملف مرفق", "المُرفق"],  # A17 / iOS
    "poll": [],  # not found; the structural poll rule in whatsapp.py applies
    "chat_file": ["دردشة واتساب مع {}"],  # A17
}

HI = {  # Hindi
    "media": ["<मीडिया के बिना>",  # A17 hi-v16, CA
              "फ़ोटो हटाई गई", "वीडियो छोड़ा गया", "ऑडियो हटाई गयी", "स्टिकर छोड़ा गया", "GIF छोड़ा गया",  # iOS, real
              "कॉन्टैक्ट कार्ड छोड़ा गया", "डॉक्यूमेंट छोड़ा गया"],  # iOS, real
    "view_once": [],
    "deleted": ["यह मैसेज डिलीट कर दिया गया है", "आपने यह मैसेज डिलीट किया",  # iOS, real
                "यह संदेश मिटाया गया", "आपने यह संदेश मिटाया",  # A17 hi-v16
                "यह मैसेज किसी एडमिन ने डिलीट कर दिया है"],  # iOS
    "calls": ["वॉइस कॉल मिस हुई", "मिस्ड वीडियो कॉल", "ग्रुप वॉइस कॉल मिस हुई", "मिस्ड ग्रुप वीडियो कॉल",  # iOS
              "छूटी हुई ध्वनि कॉल", "छूटी हुई विडियो कॉल"],  # A17 hi-v16
    "notices": ["मैसेजेस और कॉल्स एंड-टू-एंड एन्क्रिप्टेड हैं",  # iOS, real
                "आप जो मैसेजेस खुद को भेजते हैं वे एंड-टू-एंड एन्क्रिप्टेड होते हैं",  # iOS
                "इस चैट और कॉल मे भेजे गए सन्देश शुरू से अंत तक एन्क्रिप्शन के साथ सुरक्षित है"],  # A17 hi-v16
    "events": ['{} ने ग्रुप "{}" बनाया', 'आपने ग्रुप "{}" बनाया', '{} ने "{}" समूह बनाया', 'आपने "{}" समूह बनाया',
               '{} ने छोड़ा', 'आपने छोड़ा', '{} नें छोड़ा', 'आपनें छोड़ दिया', '{} ने आपको शामिल किया',
               'आपने {} को शामिल किया', '{} ने {} को शामिल किया', '{} ने {} को जोडा', '{} ने आपको हटाया',
               'आपने {} को हटाया', '{} ने {} को हटाया', '{} ने {} को हटा दिया', '{} को हटाया गया',
               '{} को हटा दिया गया', '{} को शामिल किया गया',
               '{} आमंत्रण लिंक का इस्तेमाल करके ग्रुप में शामिल हुए/हुईं',
               'आप इस ग्रुप के आमंत्रण लिंक का इस्तेमाल करके शामिल हुए/हुईं',
               'समूह निमंत्रण लिंक का उपयोग कर के {} जुड़े', '{} ने ग्रुप का नाम बदलकर "{}" किया',
               'आपने ग्रुप का नाम बदलकर "{}" किया', '{} ने विषय को "{}" में बदला', '{} ने इस ग्रुप की फ़ोटो बदली',
               '{} ने ग्रुप का वर्णन बदला', "{} ने 'गायब होने वाले मैसेज' मोड को ऑन किया",
               "{} ने 'गायब होने वाले मैसेज' मोड को ऑफ़ किया", '{} के लिए आपका सुरक्षा कोड बदल गया है',
               '{} का सुरक्षा कोड बदल गया है', '{} ने अपना फ़ोन नंबर बदला है', 'आप अब एडमिन हैं'],  # iOS, A17
    "edited": [],  # not found in any source: the summary's unknown-marker list shows it
    "attached": ["फाइल अटैच कर दी गई है", "अटैच किया गया"],  # A17 hi-v16 / iOS
    "poll": [],  # not found; the structural poll rule in whatsapp.py applies
    "chat_file": ["{} के साथ WhatsApp चैट"],  # A17 hi-v16
}

LOCALES: dict[str, dict[str, list[str]]] = {
    "en": EN, "es": ES, "pt-BR": PT_BR, "pt-PT": PT_PT, "de": DE, "fr": FR, "it": IT, "nl": NL, "ru": RU,
    "tr": TR, "id": ID, "ar": AR, "hi": HI,
}
